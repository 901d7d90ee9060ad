// The monitor's own seccomp allow-list: ONE declarative table (monitor_filter.cpp) for the
// thread that runs a microVM (KVM_RUN, its exits, its channel) and the budget-timer thread it
// creates. KVM ioctls are allowed by request number. Installed on the calling thread only
// (no TSYNC: the node's other threads are not filtered); threads it creates inherit it.
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

// What a row allows of its syscall's arguments.
enum class MonitorArg : std::uint8_t {
  any,             // every call
  equals_arg1,     // arg1 == value (ioctl: the KVM request number; fcntl: the command)
  equals_arg2,     // arg2 == value (tgkill: the signal)
  never_exec,      // arg2 (prot) without PROT_EXEC
  thread_clone,    // clone flags (arg0) of a thread: CLONE_VM|FS|FILES|SIGHAND|THREAD, no new namespace
  channel,         // arg0 is a channel descriptor (MonitorFilterOptions::channel_fds), or fd 2
  enosys,          // not allowed, but answered -ENOSYS (clone3: glibc falls back to clone)
  kill,            // never allowed: kills the process at once (the SIGSYS handler's way out)
};

struct MonitorRow {
  int nr;
  const char* syscall;  // "ioctl"
  MonitorArg rule;
  std::uint64_t value;  // for equals_*: the argument's only allowed value
  const char* what;     // the value's name ("KVM_RUN"), or "" when the rule needs none
  bool boot_only;       // only where MonitorFilterOptions::allow_boot (a VM from scratch)
  const char* who;      // who needs it, and why
};

// The table itself, for tests and docs.
std::span<const MonitorRow> monitor_syscall_table() noexcept;

// What happens on a syscall outside the table.
enum class MonitorDefault : std::uint8_t {
  // SIGSYS to the thread; the handler (installed process-wide) writes "sojourn microVM monitor:
  // seccomp refused syscall NAME (N); ending the process" on stderr, then makes the one call
  // that the table kills, so the process ends with SIGSYS. The default (see monitor_filter.cpp).
  trap_and_report,
  // SECCOMP_RET_KILL_PROCESS: the kernel ends the process at once, without a word.
  kill_process,
};

struct MonitorFilterOptions {
  // read and write only on these descriptors (plus 2: trace lines and the SIGSYS report).
  // Empty: on any descriptor (the thread can open none, but it could use the node's).
  std::vector<int> channel_fds;
  // Rows a thread needs to create guest memory (memfd_create, ftruncate): booting a VM from
  // scratch or a master. A thread that only serves forks of an existing master can drop them.
  bool allow_boot = true;
  MonitorDefault default_action = MonitorDefault::trap_and_report;
};

// The BPF program of a table compiled for `options` (libseccomp), for tests and inspection.
Result<std::vector<sock_filter>> compile_monitor_filter(const MonitorFilterOptions& options);

// Installs the filter on the calling thread (PR_SET_NO_NEW_PRIVS, then seccomp without
// TSYNC); threads it creates afterwards inherit it. Before that, it installs the SIGSYS
// report handler and the budget timer's kick handler (rt_sigaction is not in the table).
// Open /dev/kvm (KvmSystem::open) before: open/openat are not in the table either. Log to
// stderr (unbuffered) only: stdio's first write to a buffered stream fstat()s it, refused.
// Errors: Cause::filter "microVM monitor filter: ...".
Result<void> install_monitor_filter();
Result<void> install_monitor_filter(const MonitorFilterOptions& options);

}  // namespace sojourn::sandbox::kvm
