// Syscall emulation and fault resolution around the entry stub's exits.
#include "sandbox/kvm/exit_dispatch.hpp"

#include <sys/syscall.h>

#include "sandbox/kvm/entry_stub.hpp"
#include "sandbox/kvm/hex.hpp"
#include "sandbox/kvm/layout.hpp"
#include "sandbox/kvm/long_mode.hpp"

namespace sojourn::sandbox::kvm {

namespace {
Error internal(const char* what) { return fail(Cause::bug, what); }

// The ring-0 stacks: where an exception frame may legitimately be.
bool on_ring0_stack(std::uint64_t rsp) { return rsp >= kRing0StackTop - kPageSize && rsp + 40 <= kIstStackTop; }
}  // namespace

Result<DispatchOutcome> ExitDispatcher::dispatch(const ExitAction& action, kvm_regs& regs, std::uint64_t cr2) {
  if (action.kind != ExitAction::Kind::fatal && action.kind != ExitAction::Kind::resume && past_deadline()) {
    return deadline_exceeded(budget_ms_);
  }
  switch (action.kind) {
    case ExitAction::Kind::resume: return DispatchOutcome{};
    case ExitAction::Kind::syscall: return on_syscall(regs);
    case ExitAction::Kind::syscall_result:
      if (!pending_result_) return internal("the flush stub exited without a pending syscall");
      regs.rax = static_cast<std::uint64_t>(*pending_result_);
      pending_result_.reset();
      return DispatchOutcome{true, false, std::nullopt};
    case ExitAction::Kind::page_fault: return on_page_fault(regs, cr2);
    case ExitAction::Kind::fatal:
      if (action.vector >= 0) return with_guest_rip(static_cast<unsigned>(action.vector), regs);
      return action.error;
  }
  return internal("unknown exit action");
}

Result<DispatchOutcome> ExitDispatcher::on_syscall(kvm_regs& regs) {
  // Linux >= 5.x reports RIP at the `out` and skips it on the next KVM_RUN if RIP is unchanged
  // (complete_fast_pio_out); older kernels report RIP after it. Both resume correctly.
  const std::uint64_t out_at = kStubAddress + kSyscallEntryOffset;
  if (regs.rip != out_at && regs.rip != out_at + 2) return internal("a syscall exit from outside the entry stub");
  const SyscallArgs args{regs.rax, {regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9}};
  if (pause_at_channel_read_ && args.number == SYS_read && args.arg[0] == kChannelFd) {
    DispatchOutcome paused;
    paused.paused = true;
    return paused;
  }
  GuestState& state = context_.state;
  state.tlb_flush_needed = false;
  const std::int64_t result = dispatch_syscall(context_, args);
  if (past_deadline()) return deadline_exceeded(budget_ms_);  // the budget ran out while the monitor worked
  DispatchOutcome outcome;
  outcome.exit_status = state.exit_status;
  outcome.msrs_changed = state.segment_bases_dirty;
  state.segment_bases_dirty = false;
  if (state.tlb_flush_needed) {
    // Resume at the flush stub: it reloads CR3, then exits again for the result (RAX is its scratch).
    pending_result_ = result;
    regs.rip = kStubAddress + kFlushReturnOffset;
  } else {
    regs.rax = static_cast<std::uint64_t>(result);
  }
  outcome.registers_changed = true;
  return outcome;
}

Result<DispatchOutcome> ExitDispatcher::on_page_fault(const kvm_regs& regs, std::uint64_t cr2) {
  // Frame on the RSP0 stack: error code, RIP, CS, RFLAGS, RSP, SS.
  if (!on_ring0_stack(regs.rsp)) return internal("a page-fault exit with RSP off the ring-0 stack");
  auto code = context_.memory.read_u64(regs.rsp);
  auto cs = context_.memory.read_u64(regs.rsp + 16);
  if (!code || !cs) return internal("the page-fault frame is outside guest memory");
  if (*cs != kUserCodeSelector) {
    auto rip = context_.memory.read_u64(regs.rsp + 8);
    return fail(Cause::guest_fault, "#PF (page fault) in ring 0 at " + hex(cr2) +
                                                ", rip " + hex(rip ? *rip : 0));
  }
  if (auto resolved = context_.state.space.resolve_fault(context_.memory, cr2, FaultCause::from_error_code(*code));
      !resolved) {
    return resolved.error();
  }
  return DispatchOutcome{};  // the stub pops the error code and irets: no register to change
}

Error ExitDispatcher::with_guest_rip(unsigned vector, const kvm_regs& regs) const {
  const std::uint64_t rip_at = regs.rsp + (exception_has_error_code(vector) ? 8 : 0);
  std::uint64_t rip = 0;
  if (on_ring0_stack(regs.rsp)) {
    if (auto value = context_.memory.read_u64(rip_at)) rip = *value;
  }
  return guest_exception_error(vector, rip);
}

}  // namespace sojourn::sandbox::kvm
