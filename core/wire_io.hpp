// Internal: bounded reading and writing of wire payloads on top of Cereal's portable
// binary archives. Every length read is checked against the bytes that remain before
// anything is allocated for it.
#pragma once

#include <cstdint>
#include <istream>
#include <ostream>
#include <span>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <vector>

#include <cereal/archives/portable_binary.hpp>

#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn::wire {

// Thrown inside a decoder and turned into Errc::malformed_payload at its edge.
struct DecodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A read-only streambuf over a byte span, which knows how much is left.
class SpanBuf : public std::streambuf {
 public:
  explicit SpanBuf(std::span<const std::uint8_t> bytes) {
    // SAFETY: streambuf's API takes char* but this buffer is only ever read.
    char* begin = const_cast<char*>(reinterpret_cast<const char*>(bytes.data()));
    setg(begin, begin, begin + bytes.size());
  }
  std::size_t remaining() const { return static_cast<std::size_t>(egptr() - gptr()); }
};

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> bytes) : buf_(bytes), in_(&buf_), ar_(in_) {}

  std::uint8_t u8() { std::uint8_t v; ar_(v); return v; }
  std::uint16_t u16() { std::uint16_t v; ar_(v); return v; }
  std::uint32_t u32() { std::uint32_t v; ar_(v); return v; }
  std::uint64_t u64() { std::uint64_t v; ar_(v); return v; }
  std::int64_t i64() { std::int64_t v; ar_(v); return v; }
  double f64() { double v; ar_(v); return v; }

  // A count of items that each take at least `min_item_bytes` on the wire.
  std::uint32_t count(std::size_t min_item_bytes, const char* what) {
    std::uint32_t n = u32();
    if (static_cast<std::uint64_t>(n) * min_item_bytes > buf_.remaining()) {
      throw DecodeError(std::string(what) + " count " + std::to_string(n) + " exceeds the payload");
    }
    return n;
  }

  std::string string() {
    std::uint32_t n = count(1, "string length");
    std::string s(n, '\0');
    if (n) ar_(cereal::binary_data(s.data(), n));
    return s;
  }

  void expect_end() {
    if (buf_.remaining() != 0) throw DecodeError(std::to_string(buf_.remaining()) + " trailing bytes");
  }

 private:
  SpanBuf buf_;
  std::istream in_;
  cereal::PortableBinaryInputArchive ar_;
};

// A write-only streambuf that appends to a byte vector, so the encoded payload is
// handed over without the copy a string stream would need.
class VectorBuf : public std::streambuf {
 public:
  std::vector<std::uint8_t>& bytes() { return bytes_; }

 protected:
  int_type overflow(int_type c) override {
    if (c != traits_type::eof()) bytes_.push_back(static_cast<std::uint8_t>(c));
    return c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    // SAFETY: char and uint8_t have the same size; n bytes are readable at s.
    const auto* p = reinterpret_cast<const std::uint8_t*>(s);
    bytes_.insert(bytes_.end(), p, p + n);
    return n;
  }

 private:
  std::vector<std::uint8_t> bytes_;
};

class Writer {
 public:
  Writer() : out_(&buf_), ar_(out_) {}

  void u8(std::uint8_t v) { ar_(v); }
  void u16(std::uint16_t v) { ar_(v); }
  void u32(std::uint32_t v) { ar_(v); }
  void u64(std::uint64_t v) { ar_(v); }
  void i64(std::int64_t v) { ar_(v); }
  void f64(double v) { ar_(v); }
  void string(const std::string& s) {
    u32(static_cast<std::uint32_t>(s.size()));
    if (!s.empty()) ar_(cereal::binary_data(s.data(), s.size()));
  }

  std::vector<std::uint8_t> take() { return std::move(buf_.bytes()); }

 private:
  VectorBuf buf_;
  std::ostream out_;
  cereal::PortableBinaryOutputArchive ar_;
};

// The Value graph codec, shared by every message that carries values.
void write_value(Writer& w, const Value& v);
Value read_value(Reader& r);

inline void write_limits(Writer& w, const Limits& l) {
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
