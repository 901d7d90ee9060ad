// One run in one guest, seen from the host: spawn, send the request, answer host calls,
// collect the outcome, and turn every way a guest can end into a precise error.
#pragma once

#include <atomic>
#include <cstdint>

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

Result<Value> run_in_guest(ZygoteLink& zygote, const RunInput& input, HostCalls* host, const SessionOptions& options,
                           SessionCounters& counters);

// The error for a guest that ended without answering, from the zygote's report (pure: tests
// call it directly). `seccomp_syscall` is the syscall the guest reported before its kill, or
// -1 when it reported none.
Error classify_guest_end(const channel::Exited* exited, long seccomp_syscall, const Limits& limits);

}  // namespace sojourn::sandbox
