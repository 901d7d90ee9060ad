// The one seccomp table compiler: rows {syscall, action, argument conditions} compiled to a
// BPF program with libseccomp. The guest's allow-list (sandbox/guest/syscall_filter.cpp) and
// the microVM monitor's (sandbox/kvm/monitor_filter.cpp) are tables expanded into these rules.
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sojourn/core/error.hpp"

namespace sojourn::sandbox::seccomp {

// One argument test: (argument[index] & mask) == value. A mask of all bits is plain equality.
struct ArgCondition {
  unsigned index = 0;
  std::uint64_t mask = ~std::uint64_t{0};
  std::uint64_t value = 0;
};
inline ArgCondition arg_equals(unsigned index, std::uint64_t value) { return {index, ~std::uint64_t{0}, value}; }
// The bits of `mask` in the argument equal `value` ("prot without PROT_EXEC": mask PROT_EXEC, value 0).
inline ArgCondition arg_masked(unsigned index, std::uint64_t mask, std::uint64_t value) { return {index, mask, value}; }

enum class Action : std::uint8_t {
  allow,
  enosys,        // refused, answered -ENOSYS (the caller may fall back to another call)
  kill_process,  // SECCOMP_RET_KILL_PROCESS
};

// One rule. Several rules of one syscall are an OR; the conditions of one rule an AND (at most
// one condition per argument, libseccomp's limit).
struct Rule {
  int nr = 0;
  Action action = Action::allow;
  std::vector<ArgCondition> conditions;
  std::string name;  // names the rule when libseccomp refuses it ("ioctl KVM_RUN")
};

// What a syscall outside the rules gets. A rule whose action is the default one is skipped
// (libseccomp refuses it, and it changes nothing).
enum class DefaultAction : std::uint8_t {
  trap,          // SIGSYS to the thread, whose handler can report the number
  kill_process,  // the kernel ends the process at once
};

// Where libseccomp (2.5 exports to a descriptor only) writes the program.
enum class ExportVia : std::uint8_t {
  pipe,   // not subject to RLIMIT_FSIZE: the guest's zygote compiles under its rlimits
  memfd,  // a syscall the monitor's own table allows (pipe2 is not in it)
};

// How a failure is told: each filter has its own error code and prefix. `step` names what
// failed ("seccomp_init", "export", a rule's name); `error` is an errno value, 0 when none.
using FailureReport = Error (*)(const std::string& step, int error);

// Compiles `rules` for this machine's ABI; another ABI (x32, i386) is killed, never trapped.
// No-new-privileges is left to the installer, which sets it right before loading.
Result<std::vector<sock_filter>> compile(std::span<const Rule> rules, DefaultAction fallback, ExportVia via,
                                         FailureReport report);

}  // namespace sojourn::sandbox::seccomp
