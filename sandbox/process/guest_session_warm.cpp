// The host side of runs in warm guests (guest_pool.hpp): one run or a burst of runs in a
// guest kept between them, the reads carried with a plain run's request, and the guest's CPU
// clock and limit. Kills and error mapping are guest_session.cpp's (unanswered).
#include <signal.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <thread>

#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/guest_session_internal.hpp"
#include "sandbox/process/host_channel.hpp"

namespace sojourn::sandbox {

namespace {

using Clock = std::chrono::steady_clock;
using channel::Kind;
using session_internal::unanswered;

// How long a guest just forked may take to set its own limits.
constexpr auto kSetupWait = std::chrono::seconds(1);
// How long a run that wants its CPU time waits for its warm guest to leave its CPU after the
// answer (its arena's reset is the rest of its work): past it the clock is read anyway.
constexpr auto kOffCpuWait = std::chrono::milliseconds(5);

}  // namespace


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

// Appends the carried_reads frame to `frames` when a read is carried: the reads the guest's last
// run of this chunk made, answered now by `host` (its policy checks). False when none is.
bool append_carried_reads(WarmGuest& warm, std::string_view source, HostCalls& host, CarriedSession& carried,
                          std::vector<std::uint8_t>& frames) {
  WarmGuest::LearnedReads* learned = learned_for(warm, source);
  if (learned == nullptr) return false;
  for (std::size_t i = 0; i < learned->calls.size(); ++i) {
    const auto& [service, args] = learned->calls[i];
    std::optional<Value> value = host.read_ahead(service, args);
    if (!value) continue;
    carried.reads.push_back({service, learned->encoded_args[i], std::move(*value)});
    carried.read_args.push_back(args);
  }
  if (carried.reads.empty()) return false;
  const std::size_t at = frames.size();
  channel::append_frame(frames, channel::CarriedReadsView{carried.reads});
  // The values were encoded once, in the frame: when the whole frame is within the bound, so is
  // each of them. Otherwise each is measured and the larger ones are asked for when called.
  if (frames.size() - at <= kMaxCarriedValueBytes) return true;
  frames.resize(at);
  CarriedSession small;
  for (std::size_t i = 0; i < carried.reads.size(); ++i) {
    if (encode_value(carried.reads[i].value).size() > kMaxCarriedValueBytes) continue;
    small.reads.push_back(std::move(carried.reads[i]));
    small.read_args.push_back(std::move(carried.read_args[i]));
  }
  carried = std::move(small);
  if (carried.reads.empty()) return false;
  channel::append_frame(frames, channel::CarriedReadsView{carried.reads});
  return true;
}

// The carried_reads frame followed by the request, or nothing when no read is carried.
std::vector<std::uint8_t> request_with_reads(WarmGuest& warm, std::string_view source,
                                             std::span<const std::uint8_t> request, HostCalls& host,
                                             CarriedSession& carried) {
  std::vector<std::uint8_t> frame;
  frame.reserve(request.size() + 512);  // the carried values' encoder grows within it
  if (!append_carried_reads(warm, source, host, carried, frame)) return {};
  frame.insert(frame.end(), request.begin(), request.end());
  return frame;
}

// After an answer: the used reads are counted as the calls they stood for, and what to carry
// next time is what this run read (the carried reads it used, then the calls that crossed).
void settle_reads(WarmGuest& warm, std::string_view source, HostCalls& host, const CarriedSession& carried) {
  WarmGuest::LearnedReads* learned = learned_for(warm, source);
  if (learned != nullptr && carried.crossed.empty() && carried.reads.size() == learned->calls.size() &&
      carried.used.size() == carried.reads.size() &&
      std::all_of(carried.used.begin(), carried.used.end(), [](char used) { return used != 0; })) {
    // Every read carried was used and none crossed (a repeated script's usual run): what to
    // carry next time is what was carried, in its order (request_with_reads carried each
    // learned call, none skipped, as the sizes say), so the learned calls stay as they are.
    for (std::size_t i = 0; i < carried.reads.size(); ++i) host.carried_used(carried.reads[i].service, carried.read_args[i]);
    return;
  }
  std::vector<std::pair<std::string, Value>> calls;
  std::vector<std::string> encoded_args;
  std::vector<std::string> seen;  // service + encoded args of each, to keep one of each
  const auto add = [&](const std::string& service, const Value& args, std::string encoded) {
    std::string key = service + '\0' + encoded;
    if (calls.size() >= channel::kMaxCarriedReads || std::find(seen.begin(), seen.end(), key) != seen.end()) return;
    seen.push_back(std::move(key));
    calls.emplace_back(service, args);
    encoded_args.push_back(std::move(encoded));
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
  learned->encoded_args = std::move(encoded_args);
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

std::size_t run_burst_in_warm_guest(WarmGuest& warm, std::span<BurstRun> runs, std::uint32_t kill_grace_ms,
                                    SessionCounters& counters, bool& reusable) {
  reusable = false;
  if (runs.empty()) return 0;
  // The batch frame, then the runs' frames, each after its carried reads, as many as fit the
  // burst's bytes (past them, the host's write could wait on the guest while the guest waits on
  // a host call). All encoded in place in the one buffer the write sends.
  std::vector<std::uint8_t> burst;
  burst.reserve(4096);
  channel::append_frame(burst, channel::Batch{0});  // its count is filled in below
  const std::size_t first_run = burst.size();
  std::vector<CarriedSession> carried(runs.size());
  std::vector<bool> carry(runs.size(), false);
  const Value no_args = Value::table();  // a run's args when they are not a table (as make_run_request)
  std::size_t count = 0;
  for (; count < runs.size() && count < channel::kMaxBatchRuns; ++count) {
    const BurstRun& run = runs[count];
    const RunInput& input = *run.input;
    const std::size_t at = burst.size();
    carry[count] = run.host != nullptr && input.source.size() <= kMaxLearnedSource;
    if (carry[count]) (void)append_carried_reads(warm, input.source, *run.host, carried[count], burst);
    channel::append_frame(burst, channel::RunRequestView{input.source, input.chunk_name,
                                                         input.args.is_table() ? input.args : no_args, input.limits,
                                                         input.allow_jit, /*has_host=*/run.host != nullptr});
    if (count > 0 && burst.size() - first_run > kMaxBurstBytes) {
      burst.resize(at);  // this run waits for a turn of its own (its reads were only read)
      carried[count] = CarriedSession{};
      carry[count] = false;
      break;
    }
  }
  for (int i = 0; i < 4; ++i) burst[channel::kHeaderBytes + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(count >> (8 * i));

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
