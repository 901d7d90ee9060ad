// How a strong agent's heap image encodes its pages (docs/migration.md, "Image codecs"): a
// node option (NodeOptions::image_codec), carried to the jail that seals the image with each
// strong step (RunInput::image_codec) and named in the image's header (sandbox/image).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace sojourn {

// The number is the image header's codec field. zstd (level 1): the smallest images, the most
// CPU. lz4: a few times faster to seal and to open, for more bytes: the choice for loopback and
// fast links. stored: no CPU, every kept byte travels.
enum class ImageCodec : std::uint32_t { stored = 0, zstd = 1, lz4 = 2 };

constexpr std::string_view image_codec_name(ImageCodec codec) {
  switch (codec) {
    case ImageCodec::stored: return "stored";
    case ImageCodec::zstd: return "zstd";
    case ImageCodec::lz4: return "lz4";
  }
  return "unknown";
}

// The inverse of image_codec_name; nullopt for any other name.
constexpr std::optional<ImageCodec> parse_image_codec(std::string_view name) {
  for (ImageCodec c : {ImageCodec::stored, ImageCodec::zstd, ImageCodec::lz4}) {
    if (image_codec_name(c) == name) return c;
  }
  return std::nullopt;
}

}  // namespace sojourn
