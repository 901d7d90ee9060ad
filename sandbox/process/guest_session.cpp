// The host side of one guest run. Kills are decided here and by the zygote's exit report,
// never by what the guest says about itself (a guest's word only names the syscall).
// Runs in warm guests are in guest_session_warm.cpp, strong steps' images in
// guest_session_strong.cpp.
#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/guest_session_internal.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <string>

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
// How long a guest that closed its channel has to be reported by the zygote.
constexpr auto kExitReportWait = std::chrono::seconds(5);

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

std::vector<std::uint8_t> run_request_frame(const RunInput& input, const HostCalls* host) {
  std::vector<std::uint8_t> frame;
  // Room for the fields around the text: the args' encoder then grows within it (each growth
  // from an exact fit was a reallocation and a copy of the frame so far).
  frame.reserve(input.source.size() + input.chunk_name.size() + 256);
  const Value no_args = input.args.is_table() ? Value{} : Value::table();
  channel::append_frame(frame, channel::RunRequestView{input.source, input.chunk_name,
                                                       input.args.is_table() ? input.args : no_args, input.limits,
                                                       input.allow_jit, /*has_host=*/host != nullptr});
  return frame;
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

namespace session_internal {

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

}  // namespace session_internal

namespace {
using session_internal::unanswered;
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

}  // namespace sojourn::sandbox
