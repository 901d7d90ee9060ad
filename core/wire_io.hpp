// Internal: bounded reading and writing of wire payloads (the layout of Cereal's portable
// binary archives). Every length read is checked against the bytes that remain before
// anything is allocated for it.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn::wire {

// Thrown inside a decoder and turned into Errc::malformed_payload at its edge.
struct DecodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The layout is that of Cereal's portable binary archives, which wrote it before: one byte
// saying whether the fields are little-endian (1, what this side writes) or big-endian (0),
// then each field's bytes in that order, strings as a u32 length and their bytes. Written
// and read here directly: an archive over an iostream cost a stream, a locale and a
// virtual call per field, on every message.
constexpr bool kHostLittleEndian = std::endian::native == std::endian::little;

// A field cut off by the end of the payload: reported as "truncated".
struct ShortRead : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> bytes) : bytes_(bytes) {
    const bool little = u8() != 0;
    swap_ = little != kHostLittleEndian;
  }

  [[gnu::always_inline]] std::uint8_t u8() { return fixed<std::uint8_t>(); }
  [[gnu::always_inline]] std::uint16_t u16() { return fixed<std::uint16_t>(); }
  [[gnu::always_inline]] std::uint32_t u32() { return fixed<std::uint32_t>(); }
  [[gnu::always_inline]] std::uint64_t u64() { return fixed<std::uint64_t>(); }
  [[gnu::always_inline]] std::int64_t i64() { return fixed<std::int64_t>(); }
  [[gnu::always_inline]] double f64() { return fixed<double>(); }

  // A count of items that each take at least `min_item_bytes` on the wire.
  [[gnu::always_inline]] std::uint32_t count(std::size_t min_item_bytes, const char* what) {
    std::uint32_t n = u32();
    if (static_cast<std::uint64_t>(n) * min_item_bytes > remaining()) [[unlikely]] count_exceeds(n, what);
    return n;
  }

  std::string string() {
    std::uint32_t n = count(1, "string length");
    // SAFETY: count() checked that n bytes remain at at_.
    std::string s(reinterpret_cast<const char*>(bytes_.data() + at_), n);
    at_ += n;
    return s;
  }

  // A string field's bytes where they lie, for as long as the bytes read live: no copy (a
  // heap image's piece, placed straight where it goes).
  std::span<const std::uint8_t> string_view() {
    std::uint32_t n = count(1, "string length");
    const std::span<const std::uint8_t> s = bytes_.subspan(at_, n);  // count() checked that n bytes remain
    at_ += n;
    return s;
  }

  void expect_end() {
    if (remaining() != 0) throw DecodeError(std::to_string(remaining()) + " trailing bytes");
  }

  // Bytes not read yet (a decoder measures what one field took by the difference).
  std::size_t remaining() const { return bytes_.size() - at_; }

 private:

  template <class T>
  [[gnu::always_inline]] T fixed() {
    if (remaining() < sizeof(T)) [[unlikely]] short_read(sizeof(T));
    T v;
    std::memcpy(&v, bytes_.data() + at_, sizeof(T));  // SAFETY: checked that sizeof(T) bytes remain at at_
    at_ += sizeof(T);
    if (swap_) [[unlikely]] {
      std::array<std::uint8_t, sizeof(T)> raw = std::bit_cast<std::array<std::uint8_t, sizeof(T)>>(v);
      std::reverse(raw.begin(), raw.end());
      v = std::bit_cast<T>(raw);
    }
    return v;
  }
  // Out of line: the message is built only when a field is cut off, and the field reads
  // that call it stay small enough to be inlined.
  [[noreturn, gnu::cold, gnu::noinline]] void short_read(std::size_t wanted) const {
    throw ShortRead("failed to read " + std::to_string(wanted) + " bytes, " + std::to_string(remaining()) + " left");
  }
  [[noreturn, gnu::cold, gnu::noinline]] static void count_exceeds(std::uint32_t n, const char* what) {
    throw DecodeError(std::string(what) + " count " + std::to_string(n) + " exceeds the payload");
  }

  std::span<const std::uint8_t> bytes_;
  std::size_t at_ = 0;
  bool swap_ = false;
};

// Writes a payload into `Bytes`: a std::vector<std::uint8_t> (Writer, what frames carry) or
// a std::string (StringWriter: a message that travels as a string argument, moved into
// its Value without a copy).
template <class Bytes>
class BasicWriter {
 public:
  BasicWriter() {
    bytes_.resize(kFirstBytes);
    bytes_[0] = kHostLittleEndian ? 1 : 0;
    size_ = 1;
  }
  // Writes after the bytes `before` holds (a frame's header and fields before a payload
  // that follows them), so that the payload is encoded in place, not into a buffer of its
  // own and then copied; take() gives them back with the payload appended.
  explicit BasicWriter(Bytes&& before) : bytes_(std::move(before)) {
    size_ = bytes_.size();
    u8(kHostLittleEndian ? 1 : 0);
  }

  [[gnu::always_inline]] void u8(std::uint8_t v) {
    room(1);
    bytes_[size_++] = static_cast<typename Bytes::value_type>(v);
  }
  [[gnu::always_inline]] void u16(std::uint16_t v) { fixed(v); }
  [[gnu::always_inline]] void u32(std::uint32_t v) { fixed(v); }
  [[gnu::always_inline]] void u64(std::uint64_t v) { fixed(v); }
  [[gnu::always_inline]] void i64(std::int64_t v) { fixed(v); }
  [[gnu::always_inline]] void f64(double v) { fixed(v); }
  void string(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    // SAFETY: s.size() bytes are readable at s.data().
    append(s.data(), s.size());
  }

  Bytes take() {
    bytes_.resize(size_);  // a shrink: no reallocation, no copy
    return std::move(bytes_);
  }

 private:
  // The buffer is kept at its full size and size_ says how much is written: a field is
  // copied in with no resize (which zero-filled each field's bytes before the copy
  // overwrote them, a call per field). Growth zero-fills the new room once.
  static constexpr std::size_t kFirstBytes = 64;
  // A field at least this large that does not fit leaves room after it (kLargeFieldSlack
  // and 1/64 of its size) for the fields that follow: the buffer used to grow to just fit
  // it, and the next byte written then doubled it, re-copying the large field into fresh
  // pages (a 1 MB state: 1 MB copied, 2 MB mapped). Growth stays geometric.
  static constexpr std::size_t kLargeField = 64 * 1024;
  static constexpr std::size_t kLargeFieldSlack = 16 * 1024;

  template <class T>
  [[gnu::always_inline]] void fixed(T v) {
    room(sizeof(T));
    std::memcpy(bytes_.data() + size_, &v, sizeof(T));  // host order, which the first byte names
    size_ += sizeof(T);
  }
  [[gnu::always_inline]] void room(std::size_t n) {
    if (bytes_.size() - size_ < n) [[unlikely]] grow(n);
  }
  // Capacity grows geometrically; the room (what resize zero-fills) by at most kGrowRoom
  // beyond what is needed. A buffer reserved for the whole message (a TRANSFER sized ahead
  // by its SizeCounter) used to be zero-filled to its capacity at the first field: a 1 MB
  // state's frame was zeroed whole, then the state was copied over the zeroes.
  static constexpr std::size_t kGrowRoom = 4096;
  [[gnu::noinline]] void grow(std::size_t n) {
    const std::size_t need = size_ + n;
    if (bytes_.capacity() < need) bytes_.reserve(std::max(2 * bytes_.capacity(), need));
    bytes_.resize(std::min(bytes_.capacity(), std::max(need, size_ + kGrowRoom)));
  }
  void append(const void* p, std::size_t n) {
    if (n >= kLargeField) [[unlikely]] {
      append_large(p, n);
      return;
    }
    room(n);
    if (n != 0) std::memcpy(bytes_.data() + size_, p, n);  // SAFETY: room() made n bytes of room at size_
    size_ += n;
  }
  // Inserted, not copied over zeroed room: a resize would first zero the bytes the copy
  // then overwrites, a megabyte for a 1 MB state.
  [[gnu::noinline]] void append_large(const void* p, std::size_t n) {
    bytes_.resize(size_);  // a shrink: the field goes right after what is written
    if (size_ + n > bytes_.capacity()) {
      bytes_.reserve(std::max(2 * bytes_.capacity(), size_ + n + kLargeFieldSlack + n / 64));
    }
    const auto* from = static_cast<const typename Bytes::value_type*>(p);
    bytes_.insert(bytes_.end(), from, from + n);  // SAFETY: n bytes are readable at p
    size_ = bytes_.size();
  }

  Bytes bytes_;
  std::size_t size_ = 0;  // bytes written; bytes_.size() is the room
};

using Writer = BasicWriter<std::vector<std::uint8_t>>;
using StringWriter = BasicWriter<std::string>;

// Counts the bytes a payload would take, writing nothing: the wire size of a value that
// travels inside a larger message (a TRANSFER's state, the call argument it rides in)
// without encoding it into a buffer of its own. It starts at 1, for the first byte.
class SizeCounter {
 public:
  void u8(std::uint8_t) { size_ += 1; }
  void u16(std::uint16_t) { size_ += 2; }
  void u32(std::uint32_t) { size_ += 4; }
  void u64(std::uint64_t) { size_ += 8; }
  void i64(std::int64_t) { size_ += 8; }
  void f64(double) { size_ += 8; }
  void string(std::string_view s) { size_ += 4 + s.size(); }
  std::size_t size() const { return size_; }

 private:
  std::size_t size_ = 1;
};

// The Value graph codec, shared by every message that carries values.
// write_value is defined (and instantiated for Writer, StringWriter and SizeCounter) in messages.cpp.
template <class W>
void write_value(W& w, const Value& v);
extern template void write_value(Writer&, const Value&);
extern template void write_value(StringWriter&, const Value&);
extern template void write_value(SizeCounter&, const Value&);
Value read_value(Reader& r);
// encode_value(v).size(), counted without encoding.
inline std::size_t encoded_size(const Value& v) {
  SizeCounter c;
  write_value(c, v);
  return c.size();
}

template <class W>
inline void write_limits(W& w, const Limits& l) {
  w.u64(l.cpu_instructions);
  w.u64(l.memory_bytes);
  w.u32(l.wall_ms);
}
inline Limits read_limits(Reader& r) {
  Limits l;
  l.cpu_instructions = r.u64();
  l.memory_bytes = r.u64();
  l.wall_ms = r.u32();
  return l;
}

// An eval request's fields in wire order (messages.cpp); without its signature, they are
// what the signature covers (signature.cpp), so no field can be sent but left unsigned.
void write_eval_fields(Writer& w, const EvalRequest& m, bool with_signature);

}  // namespace sojourn::wire
