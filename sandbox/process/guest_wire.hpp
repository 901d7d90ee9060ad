// The guest channel protocol: the messages a host, the zygote and a guest exchange, and
// their encoding. A frame is [u32 payload length][u8 kind][payload], little-endian; a
// payload is the message's fields in order (integers little-endian, strings and Values as
// u32 length + bytes, Values in core's encoding). Adding a message is one struct with a
// kKind and a fields() listing its members.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn::sandbox::channel {

inline constexpr std::size_t kHeaderBytes = 5;
// Bumped with any change to a message: a zygote that speaks another version is refused.
inline constexpr std::uint32_t kProtocolVersion = 7;  // 7: a batch carries up to 32 runs

enum class Kind : std::uint8_t {
  // host -> guest, on the run's channel
  run = 1,           // RunRequest: run a chunk
  host_reply = 2,    // HostReply: the answer to the guest's last HostCall
  agent = 3,         // AgentRequest: one step of a mobile agent
  resume = 4,        // ResumeRequest: a strong agent's page map, to map back and resume
  heap_pages = 5,    // a resume's kept pages, raw (the payload is nothing else; empty when the
                     // host wrote them into the arena itself); also guest -> host, pages_wanted's answer
  pages_taken = 6,   // (empty) the host read a strong stop's kept pages out of the guest itself
  pages_wanted = 7,  // (empty) the host could not: the guest sends them as a heap_pages frame
  carried_reads = 8,  // CarriedReads: read-only answers for the run frame that follows it in the same write
  batch = 9,          // Batch: the next `count` run requests (each with its carried reads) are one burst
  // guest -> host, on the run's channel
  host_call = 10,    // HostCall: node.call (and later agent.*) from Lua
  run_done = 11,     // Outcome: the run's results or its error; the guest exits after it
  seccomp_report = 12,  // SeccompReport: written by the SIGSYS handler just before the kill
  agent_done = 13,   // AgentDone: the agent step's outcome; the guest exits after it
  heap_span = 14,    // HeapSpan: a strong stop's page map and kept pages, just before its agent_done
  heap_ready = 15,   // (empty) a resume's arena is cleared and waits for its heap_pages
  reads_used = 16,   // ReadsUsed: which carried reads the run used, just before its run_done
  // host -> zygote, on the control socket (with the run's channel as SCM_RIGHTS)
  spawn = 20,        // SpawnRequest
  // zygote -> host, on the control socket
  hello = 30,        // Hello: the zygote is ready
  spawned = 31,      // Spawned (with a pidfd of the guest as SCM_RIGHTS when it worked)
  exited = 32,       // Exited: a guest was reaped
};

// A guest's CPU-time rlimit (RLIMIT_CPU, soft = hard) for a run's limits: a backstop
// behind the host's wall-clock kill, so the wall budget rounded up, plus a second. Shared
// by the guest that sets it and the host that recognises the kernel's kill.
inline std::uint64_t guest_cpu_seconds(const Limits& limits) { return (limits.wall_ms + 999) / 1000 + 1; }
// The exit status of a guest whose SIGXCPU handler ended it at its CPU-time soft limit
// (the hard limit, a second later, is the kernel's SIGKILL should the handler not run).
inline constexpr int kCpuLimitExitStatus = 128 + 24;  // 128 + SIGXCPU, as a shell reports it

struct RunRequest {
  static constexpr Kind kKind = Kind::run;
  std::string source;
  std::string chunk_name;
  Value args;
  Limits limits;
  bool allow_jit = false;
  bool has_host = true;  // false: node.call fails as "not available here", as in run_lua
  template <class F> void fields(F& f) { f(source, chunk_name, args, limits, allow_jit, has_host); }
};

// A RunRequest's frame encoded straight from the run's input (a burst's runs on the host): the
// same fields in the same order, the text and args not copied into a RunRequest first.
struct RunRequestView {
  static constexpr Kind kKind = Kind::run;
  std::string_view source;
  std::string_view chunk_name;
  const Value& args;
  Limits limits;
  bool allow_jit = false;
  bool has_host = true;
  template <class F> void fields(F& f) { f(source, chunk_name, args, limits, allow_jit, has_host); }
};

// run_agent's input: the chunk (as in RunRequest), then the agent's entry, state and facts.
struct AgentRequest {
  static constexpr Kind kKind = Kind::agent;
  RunRequest run;
  std::string entry;
  Value state;
  Value info;
  bool strong = false;  // the entry runs as a strong agent (docs/migration.md, "Strong mobility")
  // At a strong stop the host reads the kept pages out of the guest's arena itself: the
  // heap_span carries no pages, and the guest waits for pages_taken or pages_wanted.
  bool pages_direct = false;
  template <class F> void fields(F& f) { run.fields(f), f(entry, state, info, strong, pages_direct); }
};

// A strong agent's next step: the page map of an image the host opened and checked, and the
// agent coroutine at `agent_handle` resumed with `run`'s limits (run.source is not used) and the
// facts in `info`. A heap_pages frame follows at once with the kept pages, in the map's order,
// which the guest reads straight into its arena at their places (its other pages are zero).
struct ResumeRequest {
  static constexpr Kind kKind = Kind::resume;
  RunRequest run;
  Value info;
  std::uint64_t agent_handle = 0;
  std::uint64_t arena_bytes = 0;
  std::uint64_t used_bytes = 0;  // the span the page map covers, from the arena's base
  std::string page_map;          // heap_image.hpp's KeptPages
  // The guest clears its arena and says heap_ready first; the heap_pages frame comes after that,
  // empty when the host wrote the pages into the arena itself.
  bool pages_direct = false;
  template <class F> void fields(F& f) {
    run.fields(f), f(info, agent_handle, arena_bytes, used_bytes, page_map, pages_direct);
  }
};

// A strong stop's arena, written by the guest straight from it: the page map of its used span
// and the kept pages (heap_image.hpp's KeptPages), the pages last so that they go out of the
// arena run by run.
struct HeapSpan {
  static constexpr Kind kKind = Kind::heap_span;
  std::uint64_t agent_handle = 0;
  std::uint64_t arena_bytes = 0;
  std::uint64_t used_bytes = 0;
  std::string_view page_map;  // views into the frame, which must outlive them
  std::string_view pages;
  template <class F> void fields(F& f) { f(agent_handle, arena_bytes, used_bytes, page_map, pages); }
};

// Remote evaluation without a crossing per read (docs/jails.md, "Carried reads"): the answers
// of read-only services (kv.get) at the run's start, which the guest gives node.call for the
// same service and arguments until the run calls any other service.
struct CarriedRead {
  std::string service;
  std::string args;  // the call's args in core's Value encoding, compared byte for byte
  Value value;
};
inline constexpr std::uint32_t kMaxCarriedReads = 8;

struct CarriedReads {
  static constexpr Kind kKind = Kind::carried_reads;
  std::vector<CarriedRead> reads;  // at most kMaxCarriedReads
  template <class F> void fields(F& f) { f(reads); }
};

// CarriedReads' frame encoded from the host's own list of them, without copying it into one.
struct CarriedReadsView {
  static constexpr Kind kKind = Kind::carried_reads;
  const std::vector<CarriedRead>& reads;
  template <class F> void fields(F& f) { f(reads); }
};

// A burst of one principal's runs written at once (docs/jails.md, "Bursts"): `count` run
// frames follow, each after its own carried_reads when it has some. The guest serves them in
// order and answers each as usual (its reads_used, then its run_done). Once a run of the burst
// has called across (any node.call not answered from its carried reads), the later runs of the
// burst ignore their carried reads (read at the burst's start, they may be stale after it) and
// every call of theirs crosses.
struct Batch {
  static constexpr Kind kKind = Kind::batch;
  std::uint32_t count = 0;
  template <class F> void fields(F& f) { f(count); }
};
// What the node's queue hands one worker at most (agents/node_server.cpp, kEvalBurst): a
// pipelining client's burst in one batch. The guest refuses a larger count.
inline constexpr std::uint32_t kMaxBatchRuns = 32;

// One byte per carried read of the run, 1 when node.call got it. Only what the guest says:
// it is charged for those it claims (HostCalls::carried_used) and the host learns from it
// which reads to carry next time, for this guest alone.
struct ReadsUsed {
  static constexpr Kind kKind = Kind::reads_used;
  std::string used;
  template <class F> void fields(F& f) { f(used); }
};

struct HostCall {
  static constexpr Kind kKind = Kind::host_call;
  std::string service;
  Value args;
  template <class F> void fields(F& f) { f(service, args); }
};

// A value or an error, as it crosses the channel.
struct Outcome {
  std::uint16_t code = 0;  // an Errc
  std::string message;
  Value value;
  template <class F> void fields(F& f) { f(code, message, value); }
};

struct HostReply : Outcome {
  static constexpr Kind kKind = Kind::host_reply;
};
struct RunDone : Outcome {
  static constexpr Kind kKind = Kind::run_done;
};

struct AgentDone {
  static constexpr Kind kKind = Kind::agent_done;
  std::uint16_t code = 0;  // an Errc; the rest is meaningful when it is 0
  std::string message;
  Value results;
  Value state;
  bool went = false;
  bool waits = false;
  std::string go_peer;
  std::string go_entry;
  std::uint64_t instructions = 0;  // Lua instructions the step ran
  bool strong_stop = false;        // a strong agent stopped at agent.go(peer) or agent.checkpoint()
  bool checkpoint = false;
  template <class F> void fields(F& f) {
    f(code, message, results, state, went, waits, go_peer, go_entry, instructions, strong_stop, checkpoint);
  }
};

struct SeccompReport {
  static constexpr Kind kKind = Kind::seccomp_report;
  std::uint32_t syscall = 0;
  template <class F> void fields(F& f) { f(syscall); }
};

struct SpawnRequest {
  static constexpr Kind kKind = Kind::spawn;
  std::uint64_t id = 0;
  Limits limits;
  bool allow_jit = false;
  template <class F> void fields(F& f) { f(id, limits, allow_jit); }
};

// In Hello::namespaces, beside CLONE_NEWNET: the guests share one empty network namespace
// the zygote made at its start, instead of one each. A bit of CSIGNAL, which no CLONE_NEW*
// flag uses.
constexpr std::uint32_t kSharedNetNamespace = 0x1;

struct Hello {
  static constexpr Kind kKind = Kind::hello;
  std::uint32_t protocol = kProtocolVersion;
  std::uint32_t zygote_pid = 0;
  std::uint32_t namespaces = 0;   // CLONE_NEW* flags each guest gets, and kSharedNetNamespace
  std::string fallback;           // why some namespaces are missing ("" when none is)
  template <class F> void fields(F& f) { f(protocol, zygote_pid, namespaces, fallback); }
};

struct Spawned {
  static constexpr Kind kKind = Kind::spawned;
  std::uint64_t id = 0;
  std::uint32_t pid = 0;          // in the host's pid namespace; 0 when the fork failed
  std::string error;              // why the fork failed
  template <class F> void fields(F& f) { f(id, pid, error); }
};

struct Exited {
  static constexpr Kind kKind = Kind::exited;
  std::uint64_t id = 0;
  std::uint32_t pid = 0;
  std::int32_t code = 0;          // siginfo si_code: CLD_EXITED, CLD_KILLED or CLD_DUMPED
  std::int32_t status = 0;        // the exit status or the signal
  std::uint64_t cpu_us = 0;       // user + system CPU time the guest used
  template <class F> void fields(F& f) { f(id, pid, code, status, cpu_us); }
};

// Appends little-endian fields to a byte vector.
class Encoder {
 public:
  Encoder() = default;
  // Appends after what `start` holds (frames built one after another in one buffer).
  explicit Encoder(std::vector<std::uint8_t> start) : out_(std::move(start)) {}
  void operator()(std::uint8_t v) { out_.push_back(v); }
  void operator()(bool v) { out_.push_back(v ? 1 : 0); }
  void operator()(std::uint16_t v) { put(v, 2); }
  void operator()(std::uint32_t v) { put(v, 4); }
  void operator()(std::int32_t v) { put(static_cast<std::uint32_t>(v), 4); }
  void operator()(std::uint64_t v) { put(v, 8); }
  void operator()(const std::string& v);
  void operator()(std::string_view v);
  void operator()(const Value& v);
  void operator()(const Limits& v);
  void operator()(const std::vector<CarriedRead>& v);
  template <class... T>
  void operator()(const T&... v) requires(sizeof...(T) > 1) { ((*this)(v), ...); }
  std::vector<std::uint8_t>& bytes() { return out_; }

 private:
  void put(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  std::vector<std::uint8_t> out_;
};

// Reads fields back, checking every length against what remains; throws DecodeFailure.
class Decoder {
 public:
  explicit Decoder(std::span<const std::uint8_t> in) : in_(in) {}
  void operator()(std::uint8_t& v) { v = static_cast<std::uint8_t>(get(1)); }
  void operator()(bool& v);
  void operator()(std::uint16_t& v) { v = static_cast<std::uint16_t>(get(2)); }
  void operator()(std::uint32_t& v) { v = static_cast<std::uint32_t>(get(4)); }
  void operator()(std::int32_t& v) { v = static_cast<std::int32_t>(static_cast<std::uint32_t>(get(4))); }
  void operator()(std::uint64_t& v) { v = get(8); }
  void operator()(std::string& v);
  void operator()(std::string_view& v);  // a view into the decoded bytes
  void operator()(Value& v);
  void operator()(Limits& v);
  void operator()(std::vector<CarriedRead>& v);  // at most kMaxCarriedReads
  template <class... T>
  void operator()(T&... v) requires(sizeof...(T) > 1) { ((*this)(v), ...); }
  bool at_end() const { return in_.empty(); }

 private:
  std::uint64_t get(int n);
  std::span<const std::uint8_t> take(std::size_t n);
  std::span<const std::uint8_t> in_;
};

struct DecodeFailure {
  std::string what;
};

// The whole frame (header + payload) of a message.
template <class M>
std::vector<std::uint8_t> encode_frame(const M& message) {
  Encoder e;
  for (std::size_t i = 0; i < kHeaderBytes; ++i) e(std::uint8_t{0});
  const_cast<M&>(message).fields(e);  // fields() only reads through an Encoder
  finish_frame(e.bytes(), M::kKind);
  return std::move(e.bytes());
}
void finish_frame(std::vector<std::uint8_t>& frame, Kind kind);
// Fills in the header of the frame that starts at `at` and runs to the end of `frames`.
void finish_frame_at(std::vector<std::uint8_t>& frames, std::size_t at, Kind kind);

// Appends the whole frame of `message` to `frames`: a burst's frames are encoded in place,
// one after another, rather than each into a vector of its own and then copied.
template <class M>
void append_frame(std::vector<std::uint8_t>& frames, const M& message) {
  const std::size_t at = frames.size();
  Encoder e(std::move(frames));
  for (std::size_t i = 0; i < kHeaderBytes; ++i) e(std::uint8_t{0});
  const_cast<M&>(message).fields(e);  // fields() only reads through an Encoder
  frames = std::move(e.bytes());
  finish_frame_at(frames, at, M::kKind);
}

// The header of a frame whose payload, `payload_bytes` long, the caller writes itself (a
// resume's heap_pages).
std::array<std::uint8_t, kHeaderBytes> frame_header(Kind kind, std::uint32_t payload_bytes) noexcept;
// The guest reads frames up to 1 GiB.
inline constexpr std::uint32_t kMaxGuestFrameBytes = std::uint32_t{1} << 30;

struct FrameHeader {
  std::uint32_t length = 0;
  Kind kind{};
};
FrameHeader parse_header(std::span<const std::uint8_t, kHeaderBytes> header);

Error bad_message(Kind kind, const std::string& why);

// Decodes a payload as message M; a short, long or inconsistent payload is an internal
// error naming the message ("internal error: guest channel: bad run_done message: ...").
template <class M>
Result<M> decode_payload(std::span<const std::uint8_t> payload) {
  M message;
  try {
    Decoder d(payload);
    message.fields(d);
    if (!d.at_end()) throw DecodeFailure{"trailing bytes"};
  } catch (const DecodeFailure& failure) {
    return bad_message(M::kKind, failure.what);
  }
  return message;
}

// The SIGSYS handler's frame, built without allocating.
std::array<std::uint8_t, kHeaderBytes + 4> seccomp_report_frame(std::uint32_t syscall) noexcept;

std::string_view kind_name(Kind kind) noexcept;

}  // namespace sojourn::sandbox::channel
