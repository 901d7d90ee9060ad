// What a freshly forked guest does to itself before it reads a byte of untrusted input:
// keep only its channel, drop privileges, map its arena, cap its resources, arm the SIGSYS
// report, and install the seccomp filter.
#pragma once

#include "sandbox/guest/syscall_filter.hpp"
#include "sandbox/process/guest_wire.hpp"

namespace sojourn::sandbox::guest {

// rlimits of a guest, from the run's limits.
struct GuestRlimits {
  std::uint64_t address_space;  // RLIMIT_AS: the arena, the C++ heap, the image and stack
  std::uint64_t cpu_seconds;    // RLIMIT_CPU soft limit (SIGXCPU); the hard one is a second later
};
GuestRlimits guest_rlimits(const Limits& limits);

// Maps the fixed-address arena for a quota and makes it the Lua heap of this process.
Result<void> install_arena(std::uint64_t quota_bytes);

// Runs in the child right after the fork. `in_user_namespace`: whether the fork made a new
// user namespace (else a root zygote drops the child to nobody). Never returns: serves
// the run on the channel and exits.
[[noreturn]] void become_guest(const channel::SpawnRequest& request, int channel_fd, const CompiledFilter& filter,
                               bool in_user_namespace);

}  // namespace sojourn::sandbox::guest
