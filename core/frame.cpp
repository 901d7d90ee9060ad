// Frame header encoding and validation.
#include "sojourn/core/frame.hpp"

#include <cstdio>
#include <cstring>
#include <new>
#include <string>

namespace sojourn {

namespace {
void put_le(std::uint8_t* p, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint64_t get_le(const std::uint8_t* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}
std::string hex(std::uint64_t v, int digits) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%0*llX", digits, static_cast<unsigned long long>(v));
  return buf;
}
}  // namespace

namespace {
thread_local std::vector<std::vector<std::uint8_t>> t_small_buffers;
}  // namespace

std::vector<std::uint8_t> take_small_buffer() noexcept {
  std::vector<std::uint8_t> out;
  if (!t_small_buffers.empty()) {
    out.swap(t_small_buffers.back());
    t_small_buffers.pop_back();
  }
  return out;
}

void give_small_buffer(std::vector<std::uint8_t>& bytes) noexcept {
  const std::size_t capacity = bytes.capacity();
  if (capacity == 0 || capacity > kSmallBufferBytes || t_small_buffers.size() >= kKeptSmallBuffers) return;
  // The list's own room is reserved once, for the most it keeps: no allocation after that.
  if (t_small_buffers.capacity() < kKeptSmallBuffers) {
    try {
      t_small_buffers.reserve(kKeptSmallBuffers);
    } catch (const std::bad_alloc&) {
      return;
    }
  }
  bytes.clear();
  t_small_buffers.push_back(std::move(bytes));
}

std::string_view frame_kind_name(FrameKind kind) noexcept {
  switch (kind) {
    case FrameKind::call: return "call";
    case FrameKind::eval: return "eval";
    case FrameKind::reply: return "reply";
    case FrameKind::protocol_error: return "protocol_error";
    case FrameKind::ping: return "ping";
    case FrameKind::pong: return "pong";
  }
  return "unknown";
}

std::array<std::uint8_t, kFrameHeaderSize> encode_header(const FrameHeader& h) {
  std::array<std::uint8_t, kFrameHeaderSize> b{};
  put_le(&b[0], kFrameMagic, 4);
  b[4] = kProtocolVersion;
  b[5] = static_cast<std::uint8_t>(h.kind);
  put_le(&b[6], h.flags, 2);
  put_le(&b[8], h.length, 4);
  put_le(&b[12], h.request_id, 8);
  return b;
}

Result<FrameHeader> parse_header(std::span<const std::uint8_t, kFrameHeaderSize> b, std::uint32_t max_payload) {
  auto magic = static_cast<std::uint32_t>(get_le(&b[0], 4));
  if (magic != kFrameMagic) return make_error(Errc::bad_magic, "bad frame magic " + hex(magic, 8));
  if (b[4] != kProtocolVersion) {
    return make_error(Errc::bad_version, "unsupported protocol version " + std::to_string(b[4]) +
                                             " (this node speaks " + std::to_string(kProtocolVersion) + ")");
  }
  std::uint8_t kind = b[5];
  if (kind < static_cast<std::uint8_t>(FrameKind::call) || kind > static_cast<std::uint8_t>(FrameKind::pong)) {
    return make_error(Errc::bad_kind, "unknown frame kind " + std::to_string(kind));
  }
  FrameHeader h;
  h.kind = static_cast<FrameKind>(kind);
  h.flags = static_cast<std::uint16_t>(get_le(&b[6], 2));
  if (h.flags != 0) return make_error(Errc::malformed_payload, "reserved frame flags " + hex(h.flags, 4) + " are set");
  h.length = static_cast<std::uint32_t>(get_le(&b[8], 4));
  if (h.length > max_payload) {
    return errors::frame_too_large(h.length, max_payload);
  }
  h.request_id = get_le(&b[12], 8);
  return h;
}

std::vector<std::uint8_t> encode_frame(FrameKind kind, std::uint64_t request_id, std::span<const std::uint8_t> payload) {
  FrameHeader h{kind, 0, static_cast<std::uint32_t>(payload.size()), request_id};
  auto header = encode_header(h);
  std::vector<std::uint8_t> out(kFrameHeaderSize + payload.size());
  std::memcpy(out.data(), header.data(), kFrameHeaderSize);
  if (!payload.empty()) std::memcpy(out.data() + kFrameHeaderSize, payload.data(), payload.size());
  return out;
}

Result<void> FrameDecoder::feed(std::span<const std::uint8_t> bytes) {
  if (failed_) return make_error(Errc::malformed_payload, "malformed payload: stream already failed");
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
  std::size_t pos = 0;
  while (buffer_.size() - pos >= kFrameHeaderSize) {
    std::span<const std::uint8_t, kFrameHeaderSize> head(buffer_.data() + pos, kFrameHeaderSize);
    auto h = parse_header(head, max_payload_);
    if (!h) {
      failed_ = true;
      return h.error();
    }
    if (buffer_.size() - pos - kFrameHeaderSize < h->length) break;
    Frame f;
    f.header = *h;
    auto begin = buffer_.begin() + static_cast<std::ptrdiff_t>(pos + kFrameHeaderSize);
    f.payload.assign(begin, begin + h->length);
    frames_.push_back(std::move(f));
    pos += kFrameHeaderSize + h->length;
  }
  buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(pos));
  return {};
}

}  // namespace sojourn
