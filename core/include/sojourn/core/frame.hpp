// The frame: a fixed 20-byte header (magic, version, kind, flags, payload length,
// request id; little-endian) followed by the payload. See docs/protocol.md.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "sojourn/core/error.hpp"

namespace sojourn {

inline constexpr std::uint32_t kFrameMagic = 0x4E524A53;  // bytes "SJRN" on the wire
inline constexpr std::uint8_t kProtocolVersion = 2;  // 2: an eval names its destination
inline constexpr std::size_t kFrameHeaderSize = 20;
inline constexpr std::uint32_t kDefaultMaxPayload = 16u << 20;  // 16 MiB

// Numbers are part of the protocol.
enum class FrameKind : std::uint8_t {
  call = 1,            // CallRequest -> reply
  eval = 2,            // EvalRequest -> reply
  reply = 3,           // Reply, same request id as the request
  protocol_error = 4,  // ProtocolError, request id 0, then the sender closes
  ping = 5,            // empty -> pong
  pong = 6,            // empty
};
std::string_view frame_kind_name(FrameKind kind) noexcept;

struct FrameHeader {
  FrameKind kind = FrameKind::ping;
  std::uint16_t flags = 0;  // reserved, zero in version 1
  std::uint32_t length = 0;
  std::uint64_t request_id = 0;
};

struct Frame {
  FrameHeader header;
  std::vector<std::uint8_t> payload;
};

std::array<std::uint8_t, kFrameHeaderSize> encode_header(const FrameHeader& h);

// Small payload buffers kept per thread between the end of one message and the encoding
// of the next: a connection that has written a frame, or a caller done with a reply's
// payload, gives the buffer back; encode() takes one. A request or a reply then costs no
// allocation for its payload. At most kKeptSmallBuffers of at most kSmallBufferBytes are
// kept; a buffer given back is emptied (its old bytes are never read again: a writer
// zero-fills the room it takes).
inline constexpr std::size_t kSmallBufferBytes = 1024;
inline constexpr std::size_t kKeptSmallBuffers = 64;
// An empty buffer this thread gave back (with its capacity), or an empty vector.
std::vector<std::uint8_t> take_small_buffer() noexcept;
// Keeps `bytes` for this thread if it is small and the thread keeps fewer than the most;
// otherwise leaves it to be freed by the caller.
void give_small_buffer(std::vector<std::uint8_t>& bytes) noexcept;

// Checks magic, version, kind, flags and the length limit, in that order, so a bad
// length is rejected before anything is allocated for the payload.
//   bad_magic        "bad frame magic 0xXXXXXXXX"
//   bad_version      "unsupported protocol version V (this node speaks 1)"
//   bad_kind         "unknown frame kind K"
//   malformed_payload "reserved frame flags 0xXXXX are set"
//   frame_too_large  "frame payload of N bytes exceeds the limit of M bytes"
Result<FrameHeader> parse_header(std::span<const std::uint8_t, kFrameHeaderSize> bytes, std::uint32_t max_payload);

// Header and payload in one buffer, ready to write.
std::vector<std::uint8_t> encode_frame(FrameKind kind, std::uint64_t request_id, std::span<const std::uint8_t> payload);

// Incremental decoder for a byte stream (used by the in-process transport, tests and
// the fuzzer; the TCP reader parses header and payload with two exact reads).
class FrameDecoder {
 public:
  explicit FrameDecoder(std::uint32_t max_payload = kDefaultMaxPayload) : max_payload_(max_payload) {}
  // Appends bytes; returns the first error met (the stream is then unusable).
  Result<void> feed(std::span<const std::uint8_t> bytes);
  // Complete frames decoded so far, in order; the caller takes them.
  std::vector<Frame>& frames() { return frames_; }
  // Bytes of an incomplete frame still buffered (non-zero at end of stream = truncated).
  std::size_t pending_bytes() const { return buffer_.size(); }

 private:
  std::uint32_t max_payload_;
  std::vector<std::uint8_t> buffer_;
  std::vector<Frame> frames_;
  bool failed_ = false;
};

}  // namespace sojourn
