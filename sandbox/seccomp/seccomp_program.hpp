// The one seccomp table compiler: rows {syscall, action, argument conditions} compiled to a
// BPF program with libseccomp. The guest's allow-list (sandbox/guest/syscall_filter.cpp) and
// the microVM monitor's (sandbox/kvm/monitor_filter.cpp) are tables expanded into these rules.
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>


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

// What libseccomp refused: `step` names what failed ("seccomp_init", "export", a rule's name);
// `error` is an errno value, 0 when none.
struct Failure {
  std::string step;
  int error = 0;
};

// Compiles `rules` for this machine's ABI; another ABI (x32, i386) is killed, never trapped.
// No-new-privileges is left to the installer, which sets it right before loading. False, with
// `failure` set, when libseccomp refused a step.
bool compile_into(std::span<const Rule> rules, DefaultAction fallback, ExportVia via,
                  std::vector<sock_filter>& program, Failure& failure);

// The same in each filter's own result type R (the guest's is core's Result, the monitor's
// kvm::Result): `report(step, error)` makes that filter's error, with its own code and prefix.
template <class R, class Report>
R compile(std::span<const Rule> rules, DefaultAction fallback, ExportVia via, Report report) {
  std::vector<sock_filter> program;
  Failure failure;
  if (!compile_into(rules, fallback, via, program, failure)) return report(failure.step, failure.error);
  return program;
}

}  // namespace sojourn::sandbox::seccomp
