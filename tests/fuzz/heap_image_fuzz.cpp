// libFuzzer target: a heap image from a hostile peer (issue 13). The first byte is a mode:
// bit 0 reseals the rest (recomputes its hash) so the search gets past the hash check into the
// size checks, the codec's frame and the page map; bit 1 makes the rules accept whatever build
// and arena base the image declares, as a node running that guest would; bits 2-3, when not
// zero, set the header's codec field first (1 stored, 2 zstd, 3 lz4), so every decoder meets
// hostile frames whatever the seeds hold; bit 4 instead seals the rest, zero-padded to whole
// pages, as a span with that codec (zstd when bits 2-3 are zero) and opens it again. The rest
// is the image (or the span).
//
// Properties: open_image never hands back more than the quota allows, and what it hands back
// is exactly the span the header declares (whole pages, inside the declared arena);
// open_image_into asks for the page map's kept pages only, and agrees with open_image; a span
// sealed with any codec opens to itself.
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "sandbox/image/heap_image.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn::sandbox;

namespace {
constexpr std::uint64_t kQuotaBytes = 16ull << 20;  // the largest arena a restoring guest would map
constexpr std::uint64_t kBase = 0x10000000;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0];
  std::vector<std::uint8_t> bytes(data + 1, data + size);
  const unsigned codec_bits = (mode >> 2) & 3u;
  static constexpr image::Codec kCodecOf[] = {image::Codec::zstd, image::Codec::stored, image::Codec::zstd, image::Codec::lz4};
  if ((mode & 16) != 0) {
    // A round trip: the bytes as a span (at most 64 pages), sealed and opened again.
    bytes.resize(std::min<std::size_t>((bytes.size() + image::kPageBytes - 1) / image::kPageBytes, 64) * image::kPageBytes);
    image::ImageSource source{{}, kBase, kQuotaBytes, kBase, kCodecOf[codec_bits]};
    auto sealed = image::take_image(source, bytes);
    sojourn::fuzz::check(sealed.ok(), "a span of whole pages inside its arena seals");
    if (!sealed) return 0;
    auto opened = image::open_image(*sealed, image::RestoreRules{{}, kBase, kQuotaBytes});
    sojourn::fuzz::check(opened.ok() && opened->used == bytes, "a sealed span opens to itself, with every codec");
    return 0;
  }
  // The codec field sits right after the magic and the version (docs/migration.md).
  if (codec_bits != 0 && bytes.size() >= 16) {
    bytes[12] = static_cast<std::uint8_t>(kCodecOf[codec_bits]);
    bytes[13] = bytes[14] = bytes[15] = 0;
  }
  if ((mode & 1) != 0) image::reseal(bytes);

  image::RestoreRules rules;
  rules.arena_base = kBase;
  rules.max_arena_bytes = kQuotaBytes;
  if ((mode & 2) != 0) {
    auto peeked = image::peek_header(bytes);
    if (peeked) {
      rules.guest_build = peeked->guest_build;
      rules.arena_base = peeked->arena_base;
    }
  }
  auto opened = image::open_image(bytes, rules);
  // The kept-pages path a jail's resume takes: the destination is asked for exactly the page
  // map's kept pages, which fit in the declared span.
  std::vector<std::uint8_t> pages;
  auto placed = image::open_image_into(bytes, rules, [&](const image::ImageHeader& header, std::span<const std::uint8_t> map) {
    const std::uint64_t kept = image::kept_pages(map);
    sojourn::fuzz::check(map.size() == image::page_map_bytes(header.used_bytes), "a placed page map covers the span");
    sojourn::fuzz::check(kept * image::kPageBytes <= header.used_bytes, "a placed page map keeps pages of the span only");
    pages.resize(kept * image::kPageBytes);
    return std::span<std::uint8_t>(pages);
  });
  sojourn::fuzz::check(placed.ok() == opened.ok(), "opening into a destination agrees with opening");
  if (!opened) return 0;
  const image::ImageHeader& h = opened->header;
  sojourn::fuzz::check(h.arena_bytes <= kQuotaBytes, "an opened image's arena is within the quota");
  sojourn::fuzz::check(h.used_bytes <= h.arena_bytes, "an opened image's span is inside its arena");
  sojourn::fuzz::check(h.used_bytes % image::kPageBytes == 0, "an opened image's span is whole pages");
  sojourn::fuzz::check(opened->used.size() == h.used_bytes, "an opened image restores exactly its declared span");
  sojourn::fuzz::check(h.arena_base == rules.arena_base, "an opened image sits at the expected address");
  return 0;
}
