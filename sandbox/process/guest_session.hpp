// One run in one guest, seen from the host: spawn, send the request, answer host calls,
// collect the outcome, and turn every way a guest can end into a precise error.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/process/guest_pool.hpp"
#include "sandbox/process/host_channel.hpp"
#include "sandbox/process/strong_pages.hpp"
#include "sandbox/process/zygote_link.hpp"
#include "sojourn/sandbox/jail.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox {

struct SessionCounters {
  std::atomic<std::uint64_t> guests_started{0};
  std::atomic<std::uint64_t> guests_killed{0};
};

struct SessionOptions {
  std::uint32_t kill_grace_ms = 50;
  // When set: after a guest's answer, the host waits for the zygote's report of its end and
  // stores the CPU time the kernel measured for it (0 when no report came): what an agent
  // step is charged, whatever the guest says it ran.
  std::uint64_t* guest_cpu_us = nullptr;
  // Strong steps: where a heap_span frame's payload goes, and how large any frame may be
  // (the arena's size for the quota, above the memory limit); 0: the memory limit's bound.
  std::vector<std::uint8_t>* heap_span = nullptr;
  std::uint64_t max_frame_bytes = 0;
  // Strong steps of the process jail: a stop's heap_span is sealed and a resume's heap_ready
  // served there (strong_pages.hpp), its pid set when the guest is spawned.
  DirectPages* direct = nullptr;
};

// The exchange with a guest whose channel is `channel`, whatever started it (the zygote,
// or a plain fork+exec of `sojourn-guest --serve` in benchmarks): the request frame, the
// host calls, and the payload of the guest's final frame (of kind `done`).
struct Conversation {
  std::optional<std::vector<std::uint8_t>> done;  // the final frame's payload, if it came
  // The guest broke the protocol (guest_crashed), or its result was refused unread
  // (frame_too_large): either way it does not go on.
  std::optional<Error> broke;
  ChannelStatus status = ChannelStatus::ok;  // why the exchange stopped otherwise
  long seccomp_syscall = -1;        // the syscall the guest reported before a seccomp kill
};
// Any frame may be as large as the run's memory limit (and some room); the final frame at
// most `max_result_bytes` (and the few bytes its envelope may add), when that is not zero:
// a larger one is refused at its header, before the host reads it.
// With `heap_span`, one heap_span frame is kept there (a strong stop) and frames may be as large
// as `max_frame_bytes` when that is larger.
// A run's carried reads (docs/jails.md, "Carried reads"): what went with the request, what
// the guest said it used, and the calls to carried services that crossed (what to carry
// next time).
struct CarriedSession {
  std::vector<channel::CarriedRead> reads;
  std::vector<Value> read_args;  // reads[i]'s args, decoded
  std::string used;              // the guest's ReadsUsed, one byte (0 or 1) per read
  struct Crossed {
    std::string service;
    Value args;
  };
  std::vector<Crossed> crossed;  // at most channel::kMaxCarriedReads
};

Conversation converse(HostChannel& channel, std::span<const std::uint8_t> request, channel::Kind done,
                      const Limits& limits, HostCalls* host, std::uint64_t max_result_bytes = 0,
                      std::vector<std::uint8_t>* heap_span = nullptr, std::uint64_t max_frame_bytes = 0,
                      DirectPages* direct = nullptr, CarriedSession* carried = nullptr);

// What run_lua refuses before a state exists is refused before a guest exists (both jails).
Result<void> check_run_input(const RunInput& input);
// The request frame's run part for `input`; host calls are offered when `host` is given.
channel::RunRequest make_run_request(const RunInput& input, const HostCalls* host);
// The whole run frame of that request, encoded from `input` without copying its text and args.
std::vector<std::uint8_t> run_request_frame(const RunInput& input, const HostCalls* host);

// Whether the host gave up on a guest (its deadline, the node's abort, an oversized answer),
// and the error that run then ends with (both jails).
bool host_gave_up(ChannelStatus status);
Error gave_up_error(ChannelStatus status, const Limits& limits);

// Decoding a guest's final frame; an error code a run cannot end with is not believed.
Result<Value> run_outcome(std::span<const std::uint8_t> payload);
Result<AgentOutcome> agent_outcome(std::span<const std::uint8_t> payload);

// One request in a guest forked by `zygote`: the payload of its final frame, or the error
// that ended it (kills, seccomp, crashes). Errors: the zygote could not fork a guest
// (SessionCounters::guests_started did not move) is guest_crashed "guest crashed: ...".
Result<std::vector<std::uint8_t>> run_in_guest(ZygoteLink& zygote, const RunInput& input,
                                               std::span<const std::uint8_t> request, channel::Kind done,
                                               HostCalls* host, const SessionOptions& options,
                                               SessionCounters& counters);

// One request in a warm guest (taken from the pool, or just spawned and counted by the
// caller): run_in_guest's results and errors, but a guest that answered is not killed.
// `reusable` says whether it may serve its principal again (its channel is back in `warm`);
// a guest that got no answer out is killed or gone, never reusable. The CPU time charged
// (options.guest_cpu_us) is what the kernel's clock of the guest moved during the run.
Result<std::vector<std::uint8_t>> run_in_warm_guest(WarmGuest& warm, const RunInput& input,
                                                    std::span<const std::uint8_t> request, channel::Kind done,
                                                    HostCalls* host, const SessionOptions& options,
                                                    SessionCounters& counters, bool& reusable);
// A burst of plain runs of one principal in one warm guest, its CPU limit armed for all of
// them (docs/jails.md, "Bursts"): a batch frame and the runs' requests (each with its carried
// reads) in one write, then each answer in order, each run under its own wall-clock deadline
// (from its predecessor's answer; the first from the write), memory limit and host calls.
// Returns how many runs got an outcome (BurstRun::outcome): all of the first `n`, where the
// burst may stop short of runs.size() (at most channel::kMaxBatchRuns runs and kMaxBurstBytes
// of frames). When the guest ended during run k (killed at a limit, crashed, broke the
// protocol, or answered with something that does not decode, which kills it), run k has that
// error, k + 1 is returned, and the runs after k had no effect (a host call is answered only in
// its run's turn; a guest killed may have begun the next run, never past its first call):
// the caller runs them elsewhere.
// `reusable` as run_in_warm_guest's, when every run of the burst was answered.
struct BurstRun {
  const RunInput* input = nullptr;
  HostCalls* host = nullptr;
  Result<Value> outcome = Value{};
};
std::size_t run_burst_in_warm_guest(WarmGuest& warm, std::span<BurstRun> runs, std::uint32_t kill_grace_ms,
                                    SessionCounters& counters, bool& reusable);

// A warm guest's CPU-time rlimit for its next run under `limits`: RLIMIT_CPU counts the whole
// process, so the host (never the guest) sets the soft limit to the run's budget over what
// the guest used, below the hard limit its fork set for its life. False when the guest is
// gone, the kernel refused, or the budget would pass its hard limit (the guest is retired).
// The soft limit last set is remembered in `warm` (armed_soft_seconds): an unchanged one is
// not set again, and the hard limit is read once. The CPU time it counts from is rest_cpu_us
// when guest_at_rest just read it (read here otherwise).
bool arm_cpu_limit(WarmGuest& warm, const Limits& limits);
// Whether the guest has set its own limits since its fork (its hard CPU-time limit is no
// longer the zygote's unlimited one); arm_cpu_limit waits for that, this does not.
bool guest_limits_set(WarmGuest& warm);
// The CPU time a live guest used so far, in microseconds (its process CPU clock).
std::optional<std::uint64_t> guest_cpu_time_us(int pid);
// The same for a warm guest, by the clock id watch_guest kept (one clock_gettime).
std::optional<std::uint64_t> guest_cpu_time_us(const WarmGuest& warm);

// The error for a guest that ended without answering, from the zygote's report (pure: tests
// call it directly). `seccomp_syscall` is the syscall the guest reported before its kill, or
// -1 when it reported none.
Error classify_guest_end(const channel::Exited* exited, long seccomp_syscall, const Limits& limits);

// Strong steps, the same in both jails. The resume request frame for an image, checked on the
// host first (heap_image.hpp's open_image against the build of `guest_path` and the arena of
// input's memory limit; the arena must be exactly that one); `restore_us` gets the host's time for it.
Result<std::vector<std::uint8_t>> strong_resume_request(std::span<const std::uint8_t> image, const RunInput& input,
                                                        const Value& info, const HostCalls* host,
                                                        const std::string& guest_path, std::uint64_t* restore_us);
// A strong step's outcome from the guest's agent_done payload and, at a strong stop, its
// heap_span payload, sealed into an image with `codec` (guest_crashed when the span is missing or
// does not fit).
Result<StrongOutcome> strong_outcome(std::span<const std::uint8_t> done, std::span<const std::uint8_t> span_frame,
                                     const std::array<std::uint8_t, 32>& build, std::size_t arena_bytes,
                                     ImageCodec codec);

// A strong step's outcome when its stop was sealed in the session (DirectPages::image).
Result<StrongOutcome> strong_outcome(std::span<const std::uint8_t> done, DirectPages& direct);

// One strong step of either jail: `run(cpu_us, span_frame, max_frame_bytes)` runs the request in
// the jail's guest and returns its agent_done payload; at a strong stop the heap_span it read is
// sealed into an image of `guest_path`'s build. `restore_us` is the resume's host time, if any.
template <class RunGuest>
Result<StrongOutcome> strong_step(const RunInput& input, const std::string& guest_path, std::uint64_t restore_us,
                                  RunGuest&& run) {
  Result<std::array<std::uint8_t, 32>> build = image::guest_build_id(guest_path);
  if (!build) return build.error();
  const std::size_t arena_bytes = guest::arena_bytes_for_quota(input.limits.memory_bytes);
  std::uint64_t cpu_us = 0;
  std::vector<std::uint8_t> span_frame;
  Result<std::vector<std::uint8_t>> done = run(&cpu_us, &span_frame, arena_bytes);
  if (!done) return done.error();
  Result<StrongOutcome> strong = strong_outcome(*done, span_frame, *build, arena_bytes, input.image_codec);
  if (!strong) return strong.error();
  strong->step.host_cpu_us = cpu_us;
  strong->restore_us = restore_us;
  return strong;
}

}  // namespace sojourn::sandbox
