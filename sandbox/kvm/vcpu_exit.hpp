// What the monitor does after KVM_RUN returns: a pure function of the kvm_run page (and of
// whether the budget timer fired), so every exit reason is unit-tested without /dev/kvm.
#pragma once

#include <linux/kvm.h>

#include <cstdint>

#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

struct ExitAction {
  enum class Kind {
    resume,           // nothing to do (a signal that was not the budget): KVM_RUN again
    syscall,          // the entry stub's exit: emulate the syscall in RAX
    syscall_result,   // the flush stub's exit: write the pending result to RAX and resume
    page_fault,       // a #PF from ring 3: back the page at CR2 or end the VM
    fatal,            // end the VM with `error`
  };
  Kind kind = Kind::resume;
  Error error;             // for fatal
  int vector = -1;         // for a guest exception (fatal): the x86 vector; -1 otherwise

  static ExitAction of(Kind kind) { return ExitAction{kind, Error{}, -1}; }
  static ExitAction fail(Error error, int vector = -1) { return ExitAction{Kind::fatal, std::move(error), vector}; }
};

struct ExitContext {
  bool budget_expired = false;   // the host timer for this run fired (it is what kicked the vCPU)
  std::uint64_t budget_ms = 0;   // for the message
};

ExitAction handle_exit(const kvm_run& run, const ExitContext& context);

// "wall-clock deadline of N ms exceeded" (Cause::budget): the end of a run's budget, whether
// the timer caught the guest in KVM_RUN or the monitor was working for it (ExitDispatcher).
Error deadline_exceeded(std::uint64_t budget_ms);

// The fatal message of a guest exception: "microVM guest fault: #UD (invalid opcode) at rip
// 0x401000" — the run loop reads rip from the exception frame on the ring-0 stack.
Error guest_exception_error(unsigned vector, std::uint64_t rip);

}  // namespace sojourn::sandbox::kvm
