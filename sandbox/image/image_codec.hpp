// The heap image's payload codecs (internal to sandbox/image): zstd, LZ4 frames, or the payload
// stored as it is. An encoder takes the payload in pieces and hands its output in pieces to a
// sink (where it is hashed and appended); a decoder fills exactly the bytes asked for and
// never writes past them, whatever the input.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "sandbox/image/heap_image.hpp"

namespace sojourn::sandbox::image::detail {

using Sink = std::function<void(std::span<const std::uint8_t>)>;

class Encoder {
 public:
  virtual ~Encoder() = default;
  // The next payload bytes; false on a codec failure (why()).
  virtual bool feed(std::span<const std::uint8_t> bytes, const Sink& sink) = 0;
  // feed, with `meanwhile` run once on the calling thread while the codec may still be at work
  // on `bytes` elsewhere (LZ4: while the helper thread compresses): work that needs neither
  // `bytes` nor the output, such as reading the next piece into another buffer. By default, after.
  virtual bool feed(std::span<const std::uint8_t> bytes, const Sink& sink, const std::function<void()>& meanwhile) {
    const bool ok = feed(bytes, sink);
    meanwhile();
    return ok;
  }
  // Ends the payload, which must have been exactly the size given at make_encoder.
  virtual bool end(const Sink& sink) = 0;
  // The most bytes the encoding of `payload_bytes` can take (to reserve the image once).
  virtual std::uint64_t bound(std::uint64_t payload_bytes) const = 0;
  virtual std::string why() const = 0;
};

// An encoder for a payload of `payload_bytes`; nullptr when the codec's context cannot be set up.
std::unique_ptr<Encoder> make_encoder(Codec codec, std::uint64_t payload_bytes);

// The LZ4 encoder (lz4_blocks.cpp): a frame of independent blocks, compressed on two threads.
std::unique_ptr<Encoder> make_lz4_encoder(std::uint64_t payload_bytes);

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Fills exactly `n` bytes at `to`, or fails (the input is not a valid encoding, or ends short).
  virtual bool fill(std::uint8_t* to, std::size_t n) = 0;
  // Once every declared byte was filled: whether the encoding ends there, input included.
  virtual bool ends_here() = 0;
  virtual std::string why() const = 0;
};

// A decoder over `packed` (which outlives it) once it declares exactly `payload_bytes`; nullptr
// and `why` set when it does not declare that size ("the compressed payload does not declare
// the header's size"), or, with `internal` set, when a context cannot be set up. Reads nothing
// past the frame's header.
std::unique_ptr<Decoder> make_decoder(Codec codec, std::span<const std::uint8_t> packed, std::uint64_t payload_bytes,
                                      std::string& why, bool& internal);

}  // namespace sojourn::sandbox::image::detail
