// The host side of one guest run. Kills are decided here and by the zygote's exit report,
// never by what the guest says about itself (a guest's word only names the syscall).
#include "sandbox/process/guest_session.hpp"

#include <signal.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/process/host_channel.hpp"

namespace sojourn::sandbox {

namespace {

using Clock = std::chrono::steady_clock;
using channel::Kind;

// Room around the run's memory limit for frame overhead; a result can be no larger than
// the limit at the trusted level either.
constexpr std::uint64_t kFrameSlack = 1u << 20;
// How much larger the channel's envelope of a result (lengths of the message and the value)
// may be than a reply's: a result frame over the reply limit by more would make a reply over
// it too.
constexpr std::uint64_t kResultEnvelopeSlack = 16;
// How long a guest just forked may take to set its own limits.
constexpr auto kSetupWait = std::chrono::seconds(1);
// How long a guest that closed its channel has to be reported by the zygote.
constexpr auto kExitReportWait = std::chrono::seconds(5);
// How long a run that wants its CPU time waits for its warm guest to leave its CPU after the
// answer (its arena's reset is the rest of its work): past it the clock is read anyway.
constexpr auto kOffCpuWait = std::chrono::milliseconds(5);

// The trusted level's own messages ("CPU limit of N instructions exceeded", ...).
Error limit(Errc code, const Limits& limits) { return detail::limit_error(code, limits); }

// The codes run_lua can end with; anything else from a guest is not believed.
bool is_run_error(Errc code) {
  switch (code) {
    case Errc::lua_error: case Errc::cpu_limit: case Errc::memory_limit: case Errc::deadline:
    case Errc::sandbox_refused: case Errc::not_transferable: case Errc::invalid_argument: case Errc::internal:
      return true;
    default:
      return false;
  }
}

channel::HostReply answer_host_call(HostCalls* host, const channel::HostCall& call) {
  channel::HostReply reply;
  Result<Value> result = Value{};
  if (host == nullptr) {
    result = make_error(Errc::lua_error, "node.call is not available here");
  } else {
    try {
      result = host->call(call.service, call.args);
    } catch (const std::exception& e) {
      result = errors::service_failed(call.service, e.what());
    } catch (...) {
      result = errors::service_failed(call.service, "unknown exception");
    }
  }
  if (result) {
    reply.value = std::move(*result);
  } else {
    reply.code = static_cast<std::uint16_t>(result.error().code);
    reply.message = result.error().message;
  }
  return reply;
}

// A frame the guest sent but that does not decode: the guest is not trusted to go on.
Error broke_protocol(const Error& error) { return make_error(Errc::guest_crashed, "guest crashed: " + error.message); }

Error believed_error(std::uint16_t code, std::string message) {
  if (!is_run_error(static_cast<Errc>(code))) {
    return make_error(Errc::guest_crashed, "guest crashed: it answered with error code " + std::to_string(code));
  }
  return make_error(static_cast<Errc>(code), std::move(message));
}

const char* signal_name(int sig) {
  const char* name = sigabbrev_np(sig);
  return name != nullptr ? name : "?";
}

}  // namespace

Error classify_guest_end(const channel::Exited* exited, long seccomp_syscall, const Limits& limits) {
  if (exited == nullptr) {
    return make_error(Errc::guest_crashed, "guest crashed: the zygote died before reporting how the guest ended");
  }
  const bool signalled = exited->code == CLD_KILLED || exited->code == CLD_DUMPED;
  if (signalled && exited->status == SIGSYS) {
    return make_error(Errc::seccomp_kill, "guest killed by seccomp: syscall " +
                                              (seccomp_syscall >= 0 ? std::to_string(seccomp_syscall) : "unknown"));
  }
  // RLIMIT_CPU: the guest's SIGXCPU handler exits with a status of its own at the soft
  // limit; the kernel's SIGKILL at the hard limit (a second later) is the fallback, told
  // from other kills by the CPU time used (rusage is precise runtime, the rlimit counts
  // ticks, which can run ahead of it on a loaded VM: a second of slack).
  if (exited->code == CLD_EXITED && exited->status == channel::kCpuLimitExitStatus) return limit(Errc::cpu_limit, limits);
  const std::uint64_t soft_us = channel::guest_cpu_seconds(limits) * 1'000'000ull;
  if (signalled && (exited->status == SIGXCPU || exited->status == SIGKILL) && exited->cpu_us >= soft_us) {
    return limit(Errc::cpu_limit, limits);
  }
  if (signalled) {
    return make_error(Errc::guest_crashed, "guest crashed: killed by signal " + std::to_string(exited->status) + " (SIG" +
                                               signal_name(exited->status) + ")");
  }
  return make_error(Errc::guest_crashed,
                    "guest crashed: exited with status " + std::to_string(exited->status) + " without an answer");
}

Conversation converse(HostChannel& channel, std::span<const std::uint8_t> request, Kind done, const Limits& limits,
                      HostCalls* host, std::uint64_t max_result_bytes, std::vector<std::uint8_t>* heap_span,
                      std::uint64_t max_frame_bytes, DirectPages* direct, CarriedSession* carried) {
  ReadLimits read_limits;
  read_limits.max_payload = limits.memory_bytes + kFrameSlack;
  read_limits.result_kind = done;
  read_limits.max_result = max_result_bytes == 0 ? read_limits.max_payload
                                                 : std::min(read_limits.max_payload, max_result_bytes + kResultEnvelopeSlack);
  if (heap_span != nullptr) read_limits.max_payload = std::max(read_limits.max_payload, max_frame_bytes + kFrameSlack);
  bool span_seen = false;
  Conversation talk;
  // No request: it went earlier, with the rest of a burst (run_burst_in_warm_guest).
  if (!request.empty()) talk.status = channel.write(request);
  Kind kind{};
  std::vector<std::uint8_t> payload;
  while (talk.status == ChannelStatus::ok) {
    talk.status = channel.read(kind, payload, read_limits);
    if (talk.status == ChannelStatus::result_too_large) {
      // Never read, decoded or re-encoded: the reply could not carry it anyway.
      talk.broke = errors::frame_too_large(channel.refused_length(), max_result_bytes);
      break;
    }
    if (talk.status != ChannelStatus::ok) break;
    if (kind == done) {
      talk.done = std::move(payload);
      break;
    }
    if (kind == Kind::host_call) {
      Result<channel::HostCall> call = channel::decode_payload<channel::HostCall>(payload);
      if (!call) {
        talk.broke = broke_protocol(call.error());
        break;
      }
      if (carried != nullptr && host != nullptr && carried->crossed.size() < channel::kMaxCarriedReads &&
          host->carries(call->service)) {
        carried->crossed.push_back({call->service, call->args});
      }
      talk.status = channel.write(channel::encode_frame(answer_host_call(host, *call)));
    } else if (kind == Kind::reads_used && carried != nullptr && !carried->reads.empty()) {
      // One byte, 0 or 1, per read carried: anything else is a guest that broke the protocol.
      Result<channel::ReadsUsed> used = channel::decode_payload<channel::ReadsUsed>(payload);
      if (used && (used->used.size() != carried->reads.size() ||
                   std::any_of(used->used.begin(), used->used.end(), [](char c) { return c != 0 && c != 1; }))) {
        used = channel::bad_message(Kind::reads_used, "not one flag per carried read");
      }
      if (!used) {
        talk.broke = broke_protocol(used.error());
        break;
      }
      if (carried->used.empty()) carried->used.assign(carried->reads.size(), '\0');
      for (std::size_t i = 0; i < used->used.size(); ++i) carried->used[i] |= used->used[i];
    } else if (kind == Kind::heap_span && heap_span != nullptr && !span_seen) {
      span_seen = true;
      if (direct != nullptr) {
        talk.broke = take_stop_pages(channel, payload, *direct, read_limits, talk.status);
        if (talk.broke) break;
        continue;
      }
      *heap_span = std::move(payload);
      payload = {};
    } else if (kind == Kind::heap_ready && payload.empty() && direct != nullptr && direct->resume != nullptr) {
      talk.broke = give_resume_pages(channel, *direct, talk.status);
      if (talk.broke) break;
    } else if (kind == Kind::seccomp_report) {
      if (auto report = channel::decode_payload<channel::SeccompReport>(payload)) talk.seccomp_syscall = report->syscall;
    } else {
      talk.broke = make_error(Errc::guest_crashed, "guest crashed: unexpected frame kind " +
                                                       std::to_string(static_cast<int>(kind)) + " (" +
                                                       std::string(channel::kind_name(kind)) + ")");
      break;
    }
  }
  return talk;
}

Result<void> check_run_input(const RunInput& input) {
  const Limits& limits = input.limits;
  if (limits.cpu_instructions == 0 || limits.memory_bytes == 0 || limits.wall_ms == 0) {
    return errors::invalid_argument("every limit of a Lua run must be non-zero");
  }
  if (!input.source.empty() && input.source.front() == '\x1b') {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: bytecode is not accepted");
  }
  if (input.abort != nullptr && input.abort->load(std::memory_order_relaxed)) {
    return errors::shutting_down();
  }
  return {};
}

channel::RunRequest make_run_request(const RunInput& input, const HostCalls* host) {
  return channel::RunRequest{std::string(input.source), std::string(input.chunk_name),
                             input.args.is_table() ? input.args : Value::table(), input.limits, input.allow_jit,
                             /*has_host=*/host != nullptr};
}

bool host_gave_up(ChannelStatus status) {
  return status == ChannelStatus::deadline || status == ChannelStatus::aborted || status == ChannelStatus::too_large;
}

Error gave_up_error(ChannelStatus status, const Limits& limits) {
  if (status == ChannelStatus::deadline) return limit(Errc::deadline, limits);
  if (status == ChannelStatus::too_large) return limit(Errc::memory_limit, limits);
  return errors::shutting_down();
}

Result<Value> run_outcome(std::span<const std::uint8_t> payload) {
  Result<channel::RunDone> done = channel::decode_payload<channel::RunDone>(payload);
  if (!done) return broke_protocol(done.error());
  if (done->code != 0) return believed_error(done->code, std::move(done->message));
  return std::move(done->value);
}

Result<AgentOutcome> agent_outcome(std::span<const std::uint8_t> payload) {
  Result<channel::AgentDone> done = channel::decode_payload<channel::AgentDone>(payload);
  if (!done) return broke_protocol(done.error());
  if (done->code != 0) return believed_error(done->code, std::move(done->message));
  AgentOutcome outcome;
  outcome.results = std::move(done->results);
  outcome.state = std::move(done->state);
  outcome.went = done->went;
  outcome.waits = done->waits;
  outcome.go_peer = std::move(done->go_peer);
  outcome.go_entry = std::move(done->go_entry);
  outcome.instructions = done->instructions;
  outcome.strong_stop = done->strong_stop;
  outcome.checkpoint = done->checkpoint;
  return outcome;
}

namespace {

// How a run that got no answer ends: the guest is killed (it broke the protocol, or the host
// gave up on it) or the zygote's report says how it ended by itself.
Result<std::vector<std::uint8_t>> unanswered(ZygoteLink& zygote, const SpawnedGuest& guest, const Conversation& talk,
                                             const Limits& limits, SessionCounters& counters) {
  const auto kill = [&] { ::syscall(SYS_pidfd_send_signal, guest.pidfd.get(), SIGKILL, nullptr, 0); };
  if (talk.broke) {
    kill();  // a guest that broke the protocol does not get to go on
    zygote.forget(guest.id);
    return *talk.broke;
  }
  if (host_gave_up(talk.status)) {
    kill();
    counters.guests_killed.fetch_add(1, std::memory_order_relaxed);
    zygote.forget(guest.id);
    return gave_up_error(talk.status, limits);
  }
  // The channel closed without an answer: the zygote's report says how the guest ended.
  std::optional<channel::Exited> exited = zygote.wait_exit(guest.id, Clock::now() + kExitReportWait);
  return classify_guest_end(exited ? &*exited : nullptr, talk.seccomp_syscall, limits);
}

}  // namespace

Result<std::vector<std::uint8_t>> run_in_guest(ZygoteLink& zygote, const RunInput& input,
                                               std::span<const std::uint8_t> request, Kind done, HostCalls* host,
                                               const SessionOptions& options, SessionCounters& counters) {
  const Limits& limits = input.limits;
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    return errors::internal(std::string("socketpair: ") + std::strerror(errno));
  }
  widen_channel_buffers(pair);
  UniqueFd host_end(pair[0]);
  Result<SpawnedGuest> guest = zygote.spawn(limits, input.allow_jit, UniqueFd(pair[1]));
  if (!guest) return guest.error();
  counters.guests_started.fetch_add(1, std::memory_order_relaxed);

  const auto deadline = Clock::now() + std::chrono::milliseconds(limits.wall_ms + options.kill_grace_ms);
  HostChannel channel(std::move(host_end), deadline, input.abort);
  if (options.direct != nullptr) {
    options.direct->pid = guest->pid;
    options.direct->pidfd = guest->pidfd.get();
  }
  Conversation talk = converse(channel, request, done, limits, host, input.max_result_bytes, options.heap_span,
                               options.max_frame_bytes, options.direct);
  const auto kill = [&] { ::syscall(SYS_pidfd_send_signal, guest->pidfd.get(), SIGKILL, nullptr, 0); };
  if (talk.done) {
    // The guest exits by itself after its answer; the kill makes sure none outlives its run.
    kill();
    if (options.guest_cpu_us != nullptr) {
      std::optional<channel::Exited> exited = zygote.wait_exit(guest->id, Clock::now() + kExitReportWait);
      *options.guest_cpu_us = exited ? exited->cpu_us : 0;
    } else {
      zygote.forget(guest->id);
    }
    return std::move(*talk.done);
  }
  return unanswered(zygote, *guest, talk, limits, counters);
}

namespace {

// Carried reads: a value larger than this is asked for when the run calls (it would make the
// request larger than the crossing it saves), and only chunks up to this size are learned
// from, at most this many per guest.
constexpr std::size_t kMaxCarriedValueBytes = 4096;
constexpr std::size_t kMaxLearnedSource = 16 * 1024;
constexpr std::size_t kMaxLearnedChunks = 8;
// A burst's frames in one write, at most: far below a stream socket's buffer, so the write
// never waits for the guest to read.
constexpr std::size_t kMaxBurstBytes = 48 * 1024;

WarmGuest::LearnedReads* learned_for(WarmGuest& warm, std::string_view source) {
  for (WarmGuest::LearnedReads& learned : warm.learned) {
    if (learned.source == source) return &learned;
  }
  return nullptr;
}

// The carried_reads frame followed by the request, or nothing when no read is carried: the
// reads the guest's last run of this chunk made, answered now by `host` (its policy checks).
std::vector<std::uint8_t> request_with_reads(WarmGuest& warm, std::string_view source,
                                             std::span<const std::uint8_t> request, HostCalls& host,
                                             CarriedSession& carried) {
  WarmGuest::LearnedReads* learned = learned_for(warm, source);
  if (learned == nullptr) return {};
  for (const auto& [service, args] : learned->calls) {
    std::optional<Value> value = host.read_ahead(service, args);
    if (!value || encode_value(*value).size() > kMaxCarriedValueBytes) continue;
    const std::vector<std::uint8_t> encoded = encode_value(args);
    carried.reads.push_back({service, std::string(encoded.begin(), encoded.end()), std::move(*value)});
    carried.read_args.push_back(args);
  }
  if (carried.reads.empty()) return {};
  std::vector<std::uint8_t> frame = channel::encode_frame(channel::CarriedReads{carried.reads});
  frame.insert(frame.end(), request.begin(), request.end());
  return frame;
}

// After an answer: the used reads are counted as the calls they stood for, and what to carry
// next time is what this run read (the carried reads it used, then the calls that crossed).
void settle_reads(WarmGuest& warm, std::string_view source, HostCalls& host, const CarriedSession& carried) {
  std::vector<std::pair<std::string, Value>> calls;
  std::vector<std::string> seen;  // service + encoded args of each, to keep one of each
  const auto add = [&](const std::string& service, const Value& args, std::string encoded) {
    std::string key = service + '\0' + encoded;
    if (calls.size() >= channel::kMaxCarriedReads || std::find(seen.begin(), seen.end(), key) != seen.end()) return;
    seen.push_back(std::move(key));
    calls.emplace_back(service, args);
  };
  for (std::size_t i = 0; i < carried.reads.size() && i < carried.used.size(); ++i) {
    if (carried.used[i] == 0) continue;
    host.carried_used(carried.reads[i].service, carried.read_args[i]);
    add(carried.reads[i].service, carried.read_args[i], carried.reads[i].args);
  }
  for (const CarriedSession::Crossed& call : carried.crossed) {
    const std::vector<std::uint8_t> encoded = encode_value(call.args);
    add(call.service, call.args, std::string(encoded.begin(), encoded.end()));
  }
  WarmGuest::LearnedReads* learned = learned_for(warm, source);
  if (calls.empty()) {
    if (learned != nullptr) warm.learned.erase(warm.learned.begin() + (learned - warm.learned.data()));
    return;
  }
  if (learned == nullptr) {
    if (warm.learned.size() >= kMaxLearnedChunks) warm.learned.erase(warm.learned.begin());
    learned = &warm.learned.emplace_back();
    learned->source = std::string(source);
  }
  learned->calls = std::move(calls);
}

}  // namespace

Result<std::vector<std::uint8_t>> run_in_warm_guest(WarmGuest& warm, const RunInput& input,
                                                    std::span<const std::uint8_t> request, Kind done, HostCalls* host,
                                                    const SessionOptions& options, SessionCounters& counters,
                                                    bool& reusable) {
  reusable = false;
  const Limits& limits = input.limits;
  // Read when it was taken (guest_at_rest) or when its limit was armed: one clock read a run.
  const std::optional<std::uint64_t> before = warm.rest_cpu_us ? warm.rest_cpu_us : guest_cpu_time_us(warm);
  warm.rest_cpu_us.reset();
  const auto deadline = Clock::now() + std::chrono::milliseconds(limits.wall_ms + options.kill_grace_ms);
  HostChannel channel(std::move(warm.channel), deadline, input.abort,
                      warm.timed_receive ? ChannelWaits::timed_receive : ChannelWaits::poll);
  if (options.direct != nullptr) {
    options.direct->pid = warm.guest.pid;
    options.direct->pidfd = warm.guest.pidfd.get();
    // A strong stop's guest waits for the host's word after its span: its clock read then
    // (off its CPU, so exact) holds the step up to the stop (see the answer below).
    if (options.guest_cpu_us != nullptr) {
      options.direct->parked_clock = [&warm] {
        wait_off_cpu(warm, kOffCpuWait);
        return guest_cpu_time_us(warm);
      };
    }
  }
  // Plain runs carry reads (agent steps read through their own kv step, docs/jails.md).
  const bool carry = host != nullptr && done == Kind::run_done && options.direct == nullptr &&
                     options.heap_span == nullptr && input.source.size() <= kMaxLearnedSource;
  CarriedSession carried;
  const std::vector<std::uint8_t> with_reads =
      carry ? request_with_reads(warm, input.source, request, *host, carried) : std::vector<std::uint8_t>{};
  Conversation talk = converse(channel, with_reads.empty() ? request : std::span<const std::uint8_t>(with_reads), done,
                               limits, host, input.max_result_bytes, options.heap_span, options.max_frame_bytes,
                               options.direct, carry ? &carried : nullptr);
  if (options.direct != nullptr) options.direct->parked_clock = nullptr;  // it refers to `warm`
  if (talk.done) {
    if (carry) settle_reads(warm, input.source, *host, carried);
    // The clock is read after the answer only when the caller wants the run's CPU time (a
    // syscall of its own); otherwise the guest's allowance at its next take (guest_at_rest)
    // counts from this run's start, which only makes it tighter: a run that used more than
    // the allowance has its guest's state read once at its next take.
    // Read once the guest has left its CPU (wait_off_cpu): before that the clock may not show
    // the slice it ran this step in. A strong stop's clock was read while the guest waited for
    // its pages_taken word (parked_cpu_us, exact): the guest only answers and exits after it,
    // so the clock is read once more without waiting for its exit (the teardown of its arena,
    // ~2 ms for 1 MB, is no longer on the hop's path nor charged); of the work after the
    // parked reading (reading the word, writing the answer) the part still in the guest's
    // current slice, at most one scheduler tick, may be missed.
    const std::optional<std::uint64_t> parked = options.direct != nullptr ? options.direct->parked_cpu_us : std::nullopt;
    if (options.guest_cpu_us != nullptr && !parked) wait_off_cpu(warm, kOffCpuWait);
    std::optional<std::uint64_t> after = options.guest_cpu_us != nullptr ? guest_cpu_time_us(warm) : before;
    // A guest already reaped reads as an error: the parked reading then stands.
    if (parked && (!after || *after < *parked)) after = parked;
    if (options.guest_cpu_us != nullptr) *options.guest_cpu_us = before && after && *after >= *before ? *after - *before : 0;
    warm.settled_cpu_us = after.value_or(0);
    warm.channel = channel.release();
    // A strong step's guest ends itself after its answer: spent, never given back.
    reusable = warm.channel.valid() && options.direct == nullptr;
    ++warm.runs;
    return std::move(*talk.done);
  }
  return unanswered(*warm.zygote, warm.guest, talk, limits, counters);
}

namespace {
// A CPU clock's reading in microseconds, or nullopt when the clock cannot be read.
std::optional<std::uint64_t> read_cpu_clock_us(clockid_t clock) {
  timespec now{};
  if (::clock_gettime(clock, &now) != 0) return std::nullopt;
  return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000u + static_cast<std::uint64_t>(now.tv_nsec) / 1000u;
}
}  // namespace

std::optional<std::uint64_t> guest_cpu_time_us(int pid) {
  clockid_t clock{};
  if (::clock_getcpuclockid(pid, &clock) != 0) return std::nullopt;
  return read_cpu_clock_us(clock);
}

std::optional<std::uint64_t> guest_cpu_time_us(const WarmGuest& warm) {
  if (!warm.has_cpu_clock) return guest_cpu_time_us(warm.guest.pid);
  // The clock names the pid, as clock_getcpuclockid's check did on every read before: a guest
  // gone reads as an error (guest_at_rest polls its pidfd first, and the caller retires it).
  return read_cpu_clock_us(static_cast<clockid_t>(warm.cpu_clock));
}

bool arm_cpu_limit(WarmGuest& warm, const Limits& limits) {
  if (!warm.rest_cpu_us) warm.rest_cpu_us = guest_cpu_time_us(warm);
  const std::optional<std::uint64_t> used = warm.rest_cpu_us;
  if (!used) return false;
  // RLIMIT_CPU counts the process's whole life: this run's budget starts from what it used.
  // Only the soft limit moves (raising the hard one needs a privilege the host may lack); the
  // kernel's SIGKILL at the hard limit stays the fallback should the SIGXCPU handler not run.
  if (warm.hard_cpu_seconds == 0) {
    rlimit current{};
    // A guest just forked may not have set its own limits yet (it inherited the zygote's, with
    // no hard limit): its run could not start before that anyway.
    const auto until = Clock::now() + kSetupWait;
    do {
      if (::prlimit(warm.guest.pid, RLIMIT_CPU, nullptr, &current) != 0) return false;
      if (current.rlim_max != RLIM_INFINITY) break;
      std::this_thread::yield();
    } while (Clock::now() < until);
    if (current.rlim_max == RLIM_INFINITY) return false;
    // Fixed from here: the guest's filter refuses prlimit and setrlimit.
    warm.hard_cpu_seconds = current.rlim_max;
  }
  const std::uint64_t soft = (*used + 999'999) / 1'000'000 + channel::guest_cpu_seconds(limits);
  if (soft + 1 > warm.hard_cpu_seconds) return false;
  // The soft limit the kernel holds is the one the host set last (the kernel only moves it when
  // it sends SIGXCPU, and the guest's handler then ends it): armed already when the budget
  // ends at the same whole second, which for runs far shorter than a second is nearly always.
  if (warm.armed_soft_seconds == soft) return true;
  const rlimit limit{soft, warm.hard_cpu_seconds};
  if (::prlimit(warm.guest.pid, RLIMIT_CPU, &limit, nullptr) != 0) return false;
  warm.armed_soft_seconds = soft;
  return true;
}

bool guest_limits_set(WarmGuest& warm) {
  if (warm.hard_cpu_seconds != 0) return true;
  rlimit current{};
  if (::prlimit(warm.guest.pid, RLIMIT_CPU, nullptr, &current) != 0 || current.rlim_max == RLIM_INFINITY) return false;
  warm.hard_cpu_seconds = current.rlim_max;
  return true;
}

Result<std::vector<std::uint8_t>> strong_resume_request(std::span<const std::uint8_t> bytes, const RunInput& input,
                                                        const Value& info, const HostCalls* host,
                                                        const std::string& guest_path, std::uint64_t* restore_us) {
  Result<std::array<std::uint8_t, 32>> build = image::guest_build_id(guest_path);
  if (!build) return build.error();
  const std::size_t arena_bytes = guest::arena_bytes_for_quota(input.limits.memory_bytes);
  const auto t0 = Clock::now();
  // Two frames in one buffer: the resume request with the page map, then heap_pages, whose
  // kept pages the image decompresses straight into (no other copy of them on the host).
  std::vector<std::uint8_t> frame;
  Result<image::ImageHeader> opened = image::open_image_into(
      bytes, {*build, guest::kArenaBase, arena_bytes},
      [&](const image::ImageHeader& header, std::span<const std::uint8_t> page_map) {
        const std::uint64_t pages_bytes = image::kept_pages(page_map) * image::kPageBytes;
        // Pages past what one frame can say are refused by open_image_into (no destination).
        if (pages_bytes > channel::kMaxGuestFrameBytes) return std::span<std::uint8_t>{};
        channel::ResumeRequest request{make_run_request(input, host), info, header.agent_handle, header.arena_bytes,
                                       header.used_bytes, std::string(page_map.begin(), page_map.end())};
        frame = channel::encode_frame(request);
        const auto pages_header = channel::frame_header(channel::Kind::heap_pages, static_cast<std::uint32_t>(pages_bytes));
        frame.insert(frame.end(), pages_header.begin(), pages_header.end());
        const std::size_t at = frame.size();
        frame.resize(at + pages_bytes);
        return std::span<std::uint8_t>(frame).subspan(at);
      });
  if (!opened) return opened.error();
  if (opened->arena_bytes != arena_bytes) {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: its arena of " +
                                                 std::to_string(opened->arena_bytes) +
                                                 " bytes needs the memory limit it was taken under (this step's gives " +
                                                 std::to_string(arena_bytes) + " bytes)");
  }
  if (restore_us != nullptr) {
    *restore_us = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
  }
  return frame;
}

Result<StrongOutcome> strong_outcome(std::span<const std::uint8_t> done, std::span<const std::uint8_t> span_frame,
                                     const std::array<std::uint8_t, 32>& build, std::size_t arena_bytes,
                                     ImageCodec codec) {
  Result<AgentOutcome> outcome = agent_outcome(done);
  if (!outcome) return outcome.error();
  StrongOutcome strong;
  if (outcome->strong_stop) {
    Result<channel::HeapSpan> span = channel::decode_payload<channel::HeapSpan>(span_frame);
    if (!span) return make_error(Errc::guest_crashed, "guest crashed: a strong stop without its heap span (" + span.error().message + ")");
    if (span->arena_bytes != arena_bytes || span->used_bytes > arena_bytes || span->agent_handle < guest::kArenaBase ||
        span->agent_handle >= guest::kArenaBase + span->used_bytes) {
      return make_error(Errc::guest_crashed, "guest crashed: its heap span does not fit its arena");
    }
    const auto bytes_of = [](std::string_view v) { return std::span(reinterpret_cast<const std::uint8_t*>(v.data()), v.size()); };
    const auto t0 = Clock::now();
    // take_image checks the page map against the span and the pages (invalid_argument).
    Result<std::vector<std::uint8_t>> sealed =
        image::take_image({build, guest::kArenaBase, arena_bytes, span->agent_handle, codec},
                          image::KeptPages{span->used_bytes, bytes_of(span->page_map), bytes_of(span->pages)});
    if (!sealed && sealed.error().code == Errc::invalid_argument) {
      return make_error(Errc::guest_crashed, "guest crashed: its heap span does not fit its arena (" + sealed.error().message + ")");
    }
    if (!sealed) return sealed.error();
    strong.image_us =
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
    strong.raw_bytes = span->used_bytes;
    strong.image = std::move(*sealed);
  }
  strong.step = std::move(*outcome);
  return strong;
}

Result<StrongOutcome> strong_outcome(std::span<const std::uint8_t> done, DirectPages& direct) {
  Result<AgentOutcome> outcome = agent_outcome(done);
  if (!outcome) return outcome.error();
  StrongOutcome strong;
  if (outcome->strong_stop) {
    if (!direct.image) return make_error(Errc::guest_crashed, "guest crashed: a strong stop without its heap span");
    strong.image = std::move(*direct.image);
    strong.image_us = direct.image_us;
    strong.raw_bytes = direct.raw_bytes;
  }
  strong.step = std::move(*outcome);
  return strong;
}

std::size_t run_burst_in_warm_guest(WarmGuest& warm, std::span<BurstRun> runs, std::uint32_t kill_grace_ms,
                                    SessionCounters& counters, bool& reusable) {
  reusable = false;
  if (runs.empty()) return 0;
  // The runs' frames, each after its carried reads, as many as fit the burst's bytes (past
  // them, the host's write could wait on the guest while the guest waits on a host call).
  std::vector<std::uint8_t> frames;
  std::vector<CarriedSession> carried(runs.size());
  std::vector<bool> carry(runs.size(), false);
  std::size_t count = 0;
  for (; count < runs.size() && count < channel::kMaxBatchRuns; ++count) {
    const BurstRun& run = runs[count];
    const std::vector<std::uint8_t> request = channel::encode_frame(make_run_request(*run.input, run.host));
    carry[count] = run.host != nullptr && run.input->source.size() <= kMaxLearnedSource;
    const std::vector<std::uint8_t> with_reads =
        carry[count] ? request_with_reads(warm, run.input->source, request, *run.host, carried[count]) : std::vector<std::uint8_t>{};
    const std::vector<std::uint8_t>& bytes = with_reads.empty() ? request : with_reads;
    if (count > 0 && frames.size() + bytes.size() > kMaxBurstBytes) break;
    frames.insert(frames.end(), bytes.begin(), bytes.end());
  }
  std::vector<std::uint8_t> burst = channel::encode_frame(channel::Batch{static_cast<std::uint32_t>(count)});
  burst.insert(burst.end(), frames.begin(), frames.end());

  const std::optional<std::uint64_t> before = warm.rest_cpu_us ? warm.rest_cpu_us : guest_cpu_time_us(warm);
  warm.rest_cpu_us.reset();
  const auto deadline_of = [&](const RunInput& input) {
    return Clock::now() + std::chrono::milliseconds(input.limits.wall_ms + kill_grace_ms);
  };
  HostChannel channel(std::move(warm.channel), deadline_of(*runs[0].input), runs[0].input->abort,
                      warm.timed_receive ? ChannelWaits::timed_receive : ChannelWaits::poll);
  const ChannelStatus wrote = channel.write(burst);
  for (std::size_t i = 0; i < count; ++i) {
    BurstRun& run = runs[i];
    const RunInput& input = *run.input;
    // Each run's own wall-clock budget, from its predecessor's answer (the first's from the write).
    if (i > 0) channel.set_deadline(deadline_of(input));
    Conversation talk;
    talk.status = wrote;
    if (wrote == ChannelStatus::ok) {
      talk = converse(channel, {}, Kind::run_done, input.limits, run.host, input.max_result_bytes, nullptr, 0, nullptr,
                      carry[i] ? &carried[i] : nullptr);
    }
    if (!talk.done) {
      // Killed (a limit, a broken frame) or gone: this run's error; the later ones never started.
      run.outcome = unanswered(*warm.zygote, warm.guest, talk, input.limits, counters).error();
      return i + 1;
    }
    if (carry[i]) settle_reads(warm, input.source, *run.host, carried[i]);
    run.outcome = run_outcome(*talk.done);
    ++warm.runs;
    if (!run.outcome && run.outcome.error().code == Errc::guest_crashed) {
      // An answer that does not decode, or an error a run cannot end with: the guest is not
      // trusted with the rest. The later runs had no effect (their host calls are answered
      // only in their own turn): the caller runs them elsewhere.
      ::syscall(SYS_pidfd_send_signal, warm.guest.pidfd.get(), SIGKILL, nullptr, 0);
      warm.zygote->forget(warm.guest.id);
      return i + 1;
    }
  }
  // Read once a burst (not once a run, as a single run spares it): from the burst's start, its
  // runs' CPU time would be over a reset's allowance at the next take, which then reads the
  // guest's state from /proc.
  warm.settled_cpu_us = guest_cpu_time_us(warm).value_or(before.value_or(0));
  warm.channel = channel.release();
  reusable = warm.channel.valid();
  return count;
}

}  // namespace sojourn::sandbox
