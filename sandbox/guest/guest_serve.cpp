// One run inside a guest: decode the request, run_lua with a HostCalls that crosses the
// channel, encode the outcome. Errors keep the trusted level's exact messages because the
// same run_lua produces them. The channel's reads and writes are in guest_io.cpp, a strong
// step's stop and resume in guest_strong.cpp.
#include "sandbox/guest/guest_serve.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <exception>
#include <new>
#include <string>

#include "sandbox/guest/arena.hpp"
#include "sandbox/guest/guest_serve_internal.hpp"
#include "sandbox/guest/jail_child.hpp"
#include "sandbox/guest/warm_state.hpp"
#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/lua/lua_strong.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox::guest {

namespace {

using channel::Kind;

// The host checks each frame against the run's memory limit; this only guards the guest
// against a broken host.
constexpr std::uint32_t kMaxRequestBytes = 1u << 30;

// The carried reads of the current run (docs/jails.md, "Carried reads"): answered here until
// the run calls a service none of them is for (a write, or anything else that may change
// what they read); from then on every call crosses. Cleared at each run's start.
struct Carried {
  std::vector<channel::CarriedRead> reads;
  std::string used;  // one byte per read
  bool valid = false;
};
Carried g_carried;

// The burst being served (channel::Batch): its runs still to come, and whether one of its runs
// so far called across (its later runs' carried reads, read at its start, may then be stale).
struct Burst {
  std::uint32_t left = 0;
  bool crossed = false;
};
Burst g_burst;
bool g_run_crossed = false;  // the current run made a call that crossed the channel
// The burst's frames not yet served, all read at its batch frame: on the channel they come
// before any host_reply its runs wait for.
std::deque<Frame> g_burst_frames;

// Answers of a burst's runs not yet written: held while later runs of the burst run, then
// written with the burst's last answer in one write (one wake-up of the host, not one per run;
// docs/jails.md "Bursts"). The host waits for each run's answer against that run's deadline,
// so none is held long: past kMaxHold it goes out at the next count hook of the run then
// running, or before the next run starts; and before any call that crosses the channel (the
// host answers a call in the turn of the run whose answer it waits for).
struct HeldAnswers {
  std::vector<std::uint8_t> bytes;
  std::chrono::steady_clock::time_point since;  // when the oldest was held
  int fd = -1;
};
HeldAnswers g_held;
constexpr auto kMaxHold = std::chrono::milliseconds(1);
// Reserved once: holding never allocates (an answer that does not fit goes out at once).
constexpr std::size_t kMaxHeldBytes = 64 * 1024;

// False when the channel broke (the caller's next write or read then fails too).
bool flush_held() noexcept {
  HeldAnswers& held = g_held;
  if (held.bytes.empty()) return true;
  const bool sent = write_all(held.fd, held.bytes);
  held.bytes.clear();
  return sent;
}

void flush_held_if_old() noexcept {
  const HeldAnswers& held = g_held;
  if (!held.bytes.empty() && std::chrono::steady_clock::now() - held.since >= kMaxHold) (void)flush_held();
}

// The burst's last run: its chunk, and whether it took under kMaxHold. An answer is held
// only while the next run is that chunk again after a run that quick (a pipelining client's
// repeated script): any other chunk may start with a stretch the count hook does not see
// (its parse, a C function), so the answers before it go out first.
//
// Two clock reads per run of a burst (there were three or four): the one before a run both
// ages the held answers and starts the run; the one at its end both times the run and, when
// its answer is the first one held, stamps it (from the run's end, a little before it is
// held: a hold can only end sooner).
struct LastBurstRun {
  std::string source;
  std::chrono::steady_clock::time_point started;
  std::chrono::steady_clock::time_point ended;
  bool quick = false;
};
LastBurstRun g_last_burst_run;
// The clock read before the request now being served, when one was (answers were held).
std::optional<std::chrono::steady_clock::time_point> g_before_run;

// Before a run, outside any count hook.
void flush_held_if_old_before_run() noexcept {
  g_before_run.reset();
  const HeldAnswers& held = g_held;
  if (held.bytes.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  g_before_run = now;
  if (now - held.since >= kMaxHold) (void)flush_held();
}

void before_burst_run(std::string_view source) {
  LastBurstRun& last = g_last_burst_run;
  if (!g_held.bytes.empty() && !(last.quick && last.source == source)) (void)flush_held();
  last.started = g_before_run ? *g_before_run : std::chrono::steady_clock::now();
}

void after_burst_run(std::string_view source) noexcept {
  LastBurstRun& last = g_last_burst_run;
  last.ended = std::chrono::steady_clock::now();
  last.quick = last.ended - last.started < kMaxHold;
  try {
    last.source.assign(source);
  } catch (const std::bad_alloc&) {
    last.quick = false;
    last.source.clear();
  }
}

// Holds `answer` when it may wait (more runs of the burst to come, room left); else writes
// whatever is held and it, in one write.
bool hold_or_write(int fd, std::vector<std::uint8_t>& answer, bool more_in_burst) {
  HeldAnswers& held = g_held;
  if (held.bytes.capacity() < kMaxHeldBytes) {
    try {
      held.bytes.reserve(kMaxHeldBytes);
    } catch (const std::bad_alloc&) {
      return write_all(fd, answer);  // nothing held yet: nothing can be reserved without it
    }
  }
  const bool fits = held.bytes.size() + answer.size() <= kMaxHeldBytes;
  if (fits && (more_in_burst || !held.bytes.empty())) {
    if (held.bytes.empty()) {
      // Only a burst's run is held (more_in_burst): its end was read just now.
      held.since = g_last_burst_run.ended;
      held.fd = fd;
    }
    held.bytes.insert(held.bytes.end(), answer.begin(), answer.end());
    return more_in_burst || flush_held();
  }
  return flush_held() && write_all(fd, answer);
}

std::optional<Frame> next_frame(int fd, std::uint32_t max_payload) {
  if (g_burst_frames.empty()) return read_frame(fd, max_payload);
  Frame frame = std::move(g_burst_frames.front());
  g_burst_frames.pop_front();
  return frame;
}

// The carried answer for this call, if any.
const Value* carried_answer(std::string_view service, const Value& args) {
  Carried& carried = g_carried;
  if (!carried.valid) return nullptr;
  bool service_carried = false;
  std::vector<std::uint8_t> encoded;
  for (std::size_t i = 0; i < carried.reads.size(); ++i) {
    const channel::CarriedRead& read = carried.reads[i];
    if (read.service != service) continue;
    service_carried = true;
    if (encoded.empty()) encoded = encode_value(args);
    if (read.args.size() == encoded.size() && std::memcmp(read.args.data(), encoded.data(), encoded.size()) == 0) {
      carried.used[i] = 1;
      return &read.value;
    }
  }
  // A read-only service carried for other arguments leaves the others right; any other call
  // may write: what was read at the start may be stale after it.
  if (!service_carried) carried.valid = false;
  return nullptr;
}

class ChannelHost final : public HostCalls {
 public:
  explicit ChannelHost(int fd) : fd_(fd) {}

  Result<Value> call(std::string_view service, const Value& args) override {
    if (const Value* answer = carried_answer(service, args)) return *answer;
    g_run_crossed = true;
    channel::HostCall request{std::string(service), args};
    if (!flush_held() || !write_all(fd_, channel::encode_frame(request))) return broken();
    std::optional<Frame> frame = read_frame(fd_, kMaxRequestBytes);
    if (!frame || frame->kind != Kind::host_reply) return broken();
    Result<channel::HostReply> reply = channel::decode_payload<channel::HostReply>(frame->payload);
    if (!reply) return reply.error();
    if (reply->code != 0) return make_error(static_cast<Errc>(reply->code), std::move(reply->message));
    return std::move(reply->value);
  }

 private:
  static Error broken() { return errors::internal("the guest's channel to its host broke"); }
  int fd_;
};

channel::RunDone outcome_of(const Result<Value>& result) {
  channel::RunDone done;
  if (result) {
    done.value = *result;
  } else {
    done.code = static_cast<std::uint16_t>(result.error().code);
    done.message = result.error().message;
  }
  return done;
}

}  // namespace

std::size_t carried_read_count() { return g_carried.reads.size(); }

namespace serve_internal {

RunInput input_of(const channel::RunRequest& request) {
  RunInput input;
  input.source = request.source;
  input.chunk_name = request.chunk_name;
  input.args = request.args.is_table() ? request.args : Value::table();
  input.limits = request.limits;
  input.allow_jit = request.allow_jit;
  return input;
}

}  // namespace serve_internal

namespace {

using serve_internal::input_of;
using serve_internal::resume_strong;
using serve_internal::span_writer;

// Unjailed (--serve), the arena is mapped here for the request's quota; in a jailed
// guest it was mapped before the filter.
Result<void> ensure_arena(const Limits& limits) {
  if (installed_lua_heap() != nullptr) return {};
  return install_arena(limits.memory_bytes);
}

// Takes the outcome apart: its values and strings move into the answer, which is encoded and
// written right after.
channel::AgentDone agent_done_of(Result<AgentOutcome>&& outcome) {
  channel::AgentDone done;
  if (!outcome) {
    done.code = static_cast<std::uint16_t>(outcome.error().code);
    done.message = outcome.error().message;
    return done;
  }
  done.results = std::move(outcome->results);
  done.state = std::move(outcome->state);
  done.went = outcome->went;
  done.waits = outcome->waits;
  done.go_peer = std::move(outcome->go_peer);
  done.go_entry = std::move(outcome->go_entry);
  done.instructions = outcome->instructions;
  done.strong_stop = outcome->strong_stop;
  done.checkpoint = outcome->checkpoint;
  return done;
}

// The answer frame for one request frame.
std::vector<std::uint8_t> serve_request(int fd, Frame& frame, Limits& limits, bool& strong) {
  ChannelHost channel_host(fd);
  if (frame.kind == Kind::agent) {
    Result<channel::AgentRequest> request = channel::decode_payload<channel::AgentRequest>(frame.payload);
    if (!request) return channel::encode_frame(agent_done_of(request.error()));
    limits = request->run.limits;
    if (Result<void> arena = ensure_arena(limits); !arena) return channel::encode_frame(agent_done_of(arena.error()));
    run_test_hook(request->run.source);
    const AgentInput agent{request->entry, request->state, request->info};
    HostCalls* host = request->run.has_host ? &channel_host : nullptr;
    if (request->strong) {
      // A strong step's heap image must hold only its agent: the arena back to pristine first.
      set_aside_warm_state();
      strong = true;
      return channel::encode_frame(agent_done_of(
          strong::run_agent_strong(input_of(request->run), agent, host, span_writer(fd, request->pages_direct))));
    }
    // A weak step on the prepared state (its arena restored after it, as after any run). The
    // request's bytes are all decoded (the request owns every field): their buffer goes back to
    // the C++ heap before the step, whose state conversion and answer can take its blocks (a
    // 1 MB state's frame is 1 MB of the guest's heap, otherwise held until the answer is out).
    FrameBytes().swap(frame.payload);
    return channel::encode_frame(agent_done_of(run_weak_agent(input_of(request->run), agent, host)));
  }
  if (frame.kind == Kind::resume) {
    Result<channel::ResumeRequest> request = channel::decode_payload<channel::ResumeRequest>(frame.payload);
    if (!request) return channel::encode_frame(agent_done_of(request.error()));
    limits = request->run.limits;
    set_aside_warm_state();  // the image's pages replace the whole arena
    if (Result<void> arena = ensure_arena(limits); !arena) return channel::encode_frame(agent_done_of(arena.error()));
    HostCalls* host = request->run.has_host ? &channel_host : nullptr;
    return channel::encode_frame(agent_done_of(resume_strong(fd, *request, host)));
  }
  Result<channel::RunRequest> request = channel::decode_payload<channel::RunRequest>(frame.payload);
  if (!request) return channel::encode_frame(outcome_of(request.error()));
  limits = request->limits;
  if (Result<void> arena = ensure_arena(limits); !arena) return channel::encode_frame(outcome_of(arena.error()));
  const bool in_burst = g_burst.left > 0;
  if (in_burst) before_burst_run(request->source);
  run_test_hook(request->source);
  Result<Value> outcome = run_weak(input_of(*request), request->has_host ? &channel_host : nullptr);
  if (in_burst) after_burst_run(request->source);
  return channel::encode_frame(outcome_of(outcome));
}

}  // namespace

bool serve_one_run(int fd) {
  Limits limits;
  Kind kind = Kind::run;
  detail::set_hook_tick(flush_held_if_old);
  try {
    g_carried = Carried{};
    g_run_crossed = false;
    std::optional<Frame> frame = next_frame(fd, kMaxRequestBytes);
    if (frame && frame->kind == Kind::batch) {
      // A burst's runs come in one write (no burst inside another, none empty or too long).
      Result<channel::Batch> batch = channel::decode_payload<channel::Batch>(frame->payload);
      if (!batch || g_burst.left != 0 || batch->count == 0 || batch->count > channel::kMaxBatchRuns) return false;
      g_burst = Burst{batch->count, false};
      // Every run of it (each after its carried reads) read now, before the first runs.
      for (std::uint32_t i = 0; i < batch->count; ++i) {
        std::optional<Frame> part = read_frame(fd, kMaxRequestBytes);
        if (part && part->kind == Kind::carried_reads) {
          g_burst_frames.push_back(std::move(*part));
          part = read_frame(fd, kMaxRequestBytes);
        }
        if (!part || part->kind != Kind::run) return false;
        g_burst_frames.push_back(std::move(*part));
      }
      frame = next_frame(fd, kMaxRequestBytes);
    }
    const bool in_burst = g_burst.left > 0;
    if (frame && frame->kind == Kind::carried_reads) {
      // Carried reads come with a run request, in the same write: the run frame follows.
      Result<channel::CarriedReads> carried = channel::decode_payload<channel::CarriedReads>(frame->payload);
      if (!carried) return false;
      g_carried.reads = std::move(carried->reads);
      g_carried.used.assign(g_carried.reads.size(), '\0');
      // After a crossing earlier in the burst the store may have changed since they were read:
      // unused (all reported unused), every call of this run crosses.
      g_carried.valid = !(in_burst && g_burst.crossed);
      frame = next_frame(fd, kMaxRequestBytes);
      if (!frame || frame->kind != Kind::run) return false;
    }
    if (!frame || (frame->kind != Kind::run && frame->kind != Kind::agent && frame->kind != Kind::resume)) return false;
    if (in_burst && frame->kind != Kind::run) return false;  // a burst holds plain runs only
    kind = frame->kind == Kind::run ? Kind::run : Kind::agent;
    bool strong = frame->kind == Kind::resume;
    flush_held_if_old_before_run();
    std::vector<std::uint8_t> answer = serve_request(fd, *frame, limits, strong);
    if (in_burst) {
      --g_burst.left;
      g_burst.crossed = g_burst.crossed || g_run_crossed;
    }
    if (!g_carried.reads.empty()) {
      // Which carried reads the run used goes just before its answer, in the same write.
      std::vector<std::uint8_t> used = channel::encode_frame(channel::ReadsUsed{g_carried.used});
      used.insert(used.end(), answer.begin(), answer.end());
      answer = std::move(used);
    }
    // A strong step's arena went into an image or came from one: such a guest serves no more.
    // (A burst holds plain runs only: an agent step's answer never waits.)
    return hold_or_write(fd, answer, in_burst && g_burst.left > 0) && !strong;
  } catch (const std::bad_alloc&) {
    // The C++ heap ran into RLIMIT_AS; the arena refuses Lua allocations before that.
    const Error error = detail::limit_error(Errc::memory_limit, limits);
    (void)flush_held();
    write_all(fd, kind == Kind::agent ? channel::encode_frame(agent_done_of(error)) : channel::encode_frame(outcome_of(error)));
  } catch (const std::exception& e) {
    const Error error = make_error(Errc::internal, std::string("internal error: guest: ") + e.what());
    (void)flush_held();
    write_all(fd, kind == Kind::agent ? channel::encode_frame(agent_done_of(error)) : channel::encode_frame(outcome_of(error)));
  }
  return false;  // a guest that ran out of C++ heap or threw is not trusted with another run
}

}  // namespace sojourn::sandbox::guest
