// The guest's seccomp allow-list: one declarative table (syscall_filter.cpp), compiled once
// to a BPF program with libseccomp, and installed in each guest before it reads a byte of
// untrusted input.
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sojourn/core/error.hpp"

namespace sojourn::sandbox::guest {

// The only descriptor a guest has: its channel to the host.
inline constexpr int kChannelFd = 3;

// What a row allows of its syscall's arguments.
enum class ArgRule : std::uint8_t {
  any,            // every call
  channel_only,   // arg0 == kChannelFd
  // arg1 (nfds) == 1: the descriptor inside the pollfd is not a register seccomp can read,
  // but the guest has only its channel open (every other one is closed before the filter)
  one_descriptor,
  never_exec,     // arg2 (prot) without PROT_EXEC
  write_xor_exec, // arg2 (prot) never PROT_WRITE and PROT_EXEC together (JIT runs only)
  kill,           // not allowed: kills the process at once (no SIGSYS report)
};

struct SyscallRow {
  int nr;
  const char* name;
  ArgRule rule;
  bool jit_only;    // only in the filter of runs that may use the JIT
  const char* who;  // who needs it, and why
};

// The table itself, for tests and docs.
std::span<const SyscallRow> guest_syscall_table() noexcept;

// What happens on a syscall outside the table.
enum class DefaultAction : std::uint8_t {
  // SIGSYS to the guest, whose handler reports the syscall number on the channel and then
  // ends the process (the kernel kills it with SIGSYS): the host learns which call it was.
  trap_and_report,
  // SECCOMP_RET_KILL_PROCESS: the kernel kills at once; the number is lost with the process.
  kill_process,
};

// A compiled filter: a BPF program ready for seccomp(SECCOMP_SET_MODE_FILTER).
struct CompiledFilter {
  std::vector<sock_filter> program;
};

Result<CompiledFilter> compile_guest_filter(bool allow_jit, DefaultAction action);

// Sets PR_SET_NO_NEW_PRIVS and installs the program in the calling thread. Uses only
// prctl and seccomp (no allocation), so it may run in a freshly forked child.
int install_filter(const CompiledFilter& filter) noexcept;

}  // namespace sojourn::sandbox::guest
