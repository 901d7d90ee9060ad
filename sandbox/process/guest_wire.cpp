// Encoding of the guest channel messages (see guest_wire.hpp for the frame layout).
#include "sandbox/process/guest_wire.hpp"

#include <cstdint>

#include "core/wire_io.hpp"

namespace sojourn::sandbox::channel {

void Encoder::operator()(const std::string& v) {
  (*this)(static_cast<std::uint32_t>(v.size()));
  out_.insert(out_.end(), v.begin(), v.end());
}

void Encoder::operator()(std::string_view v) {
  (*this)(static_cast<std::uint32_t>(v.size()));
  out_.insert(out_.end(), v.begin(), v.end());
}

// The value is encoded in place, after a length patched in once it is known: an agent's
// state crosses the channel copied once into the frame (it was encoded into a buffer of its
// own, then copied into the frame: a second copy of a 1 MB state, each way).
void Encoder::operator()(const Value& v) {
  const std::size_t at = out_.size();
  (*this)(std::uint32_t{0});
  wire::Writer w(std::move(out_));
  wire::write_value(w, v);
  out_ = w.take();
  const auto length = static_cast<std::uint32_t>(out_.size() - at - 4);
  for (int i = 0; i < 4; ++i) out_[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(length >> (8 * i));
}

void Encoder::operator()(const Limits& v) { (*this)(v.cpu_instructions, v.memory_bytes, v.wall_ms); }

void Encoder::operator()(const std::vector<CarriedRead>& v) {
  (*this)(static_cast<std::uint32_t>(v.size()));
  for (const CarriedRead& read : v) (*this)(read.service, read.args, read.value);
}

std::uint64_t Decoder::get(int n) {
  const auto bytes = take(static_cast<std::size_t>(n));
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(bytes[static_cast<std::size_t>(i)]) << (8 * i);
  return v;
}

std::span<const std::uint8_t> Decoder::take(std::size_t n) {
  if (n > in_.size()) throw DecodeFailure{"truncated"};
  auto head = in_.first(n);
  in_ = in_.subspan(n);
  return head;
}

void Decoder::operator()(bool& v) {
  const auto b = get(1);
  if (b > 1) throw DecodeFailure{"bad boolean"};
  v = b == 1;
}

void Decoder::operator()(std::string& v) {
  const auto bytes = take(static_cast<std::size_t>(get(4)));
  v.assign(bytes.begin(), bytes.end());
}

void Decoder::operator()(std::string_view& v) {
  const auto bytes = take(static_cast<std::size_t>(get(4)));
  v = std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void Decoder::operator()(Value& v) {
  Result<Value> value = decode_value(take(static_cast<std::size_t>(get(4))));
  if (!value) throw DecodeFailure{value.error().message};
  v = std::move(*value);
}

void Decoder::operator()(Limits& v) { (*this)(v.cpu_instructions, v.memory_bytes, v.wall_ms); }

void Decoder::operator()(std::vector<CarriedRead>& v) {
  const auto count = get(4);
  if (count > kMaxCarriedReads) throw DecodeFailure{"too many carried reads"};
  v.resize(static_cast<std::size_t>(count));
  for (CarriedRead& read : v) (*this)(read.service, read.args, read.value);
}

void finish_frame(std::vector<std::uint8_t>& frame, Kind kind) { finish_frame_at(frame, 0, kind); }

void finish_frame_at(std::vector<std::uint8_t>& frames, std::size_t at, Kind kind) {
  const auto length = static_cast<std::uint32_t>(frames.size() - at - kHeaderBytes);
  for (int i = 0; i < 4; ++i) frames[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(length >> (8 * i));
  frames[at + 4] = static_cast<std::uint8_t>(kind);
}

FrameHeader parse_header(std::span<const std::uint8_t, kHeaderBytes> header) {
  FrameHeader h;
  for (int i = 0; i < 4; ++i) h.length |= static_cast<std::uint32_t>(header[static_cast<std::size_t>(i)]) << (8 * i);
  h.kind = static_cast<Kind>(header[4]);
  return h;
}

std::array<std::uint8_t, kHeaderBytes + 4> seccomp_report_frame(std::uint32_t syscall) noexcept {
  std::array<std::uint8_t, kHeaderBytes + 4> frame{4, 0, 0, 0, static_cast<std::uint8_t>(Kind::seccomp_report)};
  for (int i = 0; i < 4; ++i) frame[kHeaderBytes + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(syscall >> (8 * i));
  return frame;
}

std::array<std::uint8_t, kHeaderBytes> frame_header(Kind kind, std::uint32_t payload_bytes) noexcept {
  std::array<std::uint8_t, kHeaderBytes> header{};
  for (int i = 0; i < 4; ++i) header[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(payload_bytes >> (8 * i));
  header[4] = static_cast<std::uint8_t>(kind);
  return header;
}

std::string_view kind_name(Kind kind) noexcept {
  switch (kind) {
    case Kind::run: return "run";
    case Kind::host_reply: return "host_reply";
    case Kind::agent: return "agent";
    case Kind::agent_done: return "agent_done";
    case Kind::resume: return "resume";
    case Kind::heap_span: return "heap_span";
    case Kind::heap_pages: return "heap_pages";
    case Kind::pages_taken: return "pages_taken";
    case Kind::pages_wanted: return "pages_wanted";
    case Kind::heap_ready: return "heap_ready";
    case Kind::carried_reads: return "carried_reads";
    case Kind::batch: return "batch";
    case Kind::reads_used: return "reads_used";
    case Kind::host_call: return "host_call";
    case Kind::run_done: return "run_done";
    case Kind::seccomp_report: return "seccomp_report";
    case Kind::spawn: return "spawn";
    case Kind::hello: return "hello";
    case Kind::spawned: return "spawned";
    case Kind::exited: return "exited";
  }
  return "unknown";
}

Error bad_message(Kind kind, const std::string& why) {
  return make_error(Errc::internal,
                    "internal error: guest channel: bad " + std::string(kind_name(kind)) + " message: " + why);
}

}  // namespace sojourn::sandbox::channel
