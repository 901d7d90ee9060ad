// One run in one guest, seen from the host: spawn, send the request, answer host calls,
// collect the outcome, and turn every way a guest can end into a precise error.
#pragma once

#include <atomic>
#include <cstdint>

#include "host_channel.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "zygote_link.hpp"

namespace sojourn::sandbox {

struct SessionCounters {
  std::atomic<std::uint64_t> guests_started{0};
  std::atomic<std::uint64_t> guests_killed{0};
};

struct SessionOptions {
  std::uint32_t kill_grace_ms = 50;
};

// The exchange with a guest whose channel is `channel`, whatever started it (the zygote,
// or a plain fork+exec of `sojourn-guest --serve` in benchmarks): the request, the host
// calls, and the outcome when the guest gave one.
struct Conversation {
  std::optional<Result<Value>> outcome;  // set when the guest answered (or broke the protocol)
  ChannelStatus status = ChannelStatus::ok;  // why it stopped otherwise
  long seccomp_syscall = -1;             // the syscall the guest reported before a seccomp kill
};
Conversation converse(HostChannel& channel, const RunInput& input, HostCalls* host);

Result<Value> run_in_guest(ZygoteLink& zygote, const RunInput& input, HostCalls* host, const SessionOptions& options,
                           SessionCounters& counters);

// The error for a guest that ended without answering, from the zygote's report (pure: tests
// call it directly). `seccomp_syscall` is the syscall the guest reported before its kill, or
// -1 when it reported none.
Error classify_guest_end(const channel::Exited* exited, long seccomp_syscall, const Limits& limits);

}  // namespace sojourn::sandbox
