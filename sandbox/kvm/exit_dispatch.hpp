// What the run loop does with an ExitAction, over the registers KVM_GET_REGS/SREGS gave it:
// emulate a syscall, hand back its result through the flush stub, back a faulting page, or
// turn a fatal exception into its error with the guest's RIP. Pure: the vCPU wrapper only
// moves registers in and out, so all of this is unit-tested without /dev/kvm.
#pragma once

#include <linux/kvm.h>

#include <atomic>
#include <cstdint>
#include <optional>

#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/syscall_table.hpp"
#include "sandbox/kvm/vcpu_exit.hpp"
#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

struct DispatchOutcome {
  bool registers_changed = false;  // KVM_SET_REGS before resuming
  bool msrs_changed = false;       // KVM_SET_MSRS (FS/GS base) before resuming
  std::optional<int> exit_status;  // exit_group: the vCPU is finished
  bool paused = false;             // a master's first channel read: stop here, not emulated
};

class ExitDispatcher {
 public:
  explicit ExitDispatcher(SyscallContext& context) : context_(context) {}

  // `regs` is read and updated in place; `cr2` matters for page faults only.
  Result<DispatchOutcome> dispatch(const ExitAction& action, kvm_regs& regs, std::uint64_t cr2);
  // A master VM: the first read on the channel is not emulated but pauses the run loop, so
  // the snapshot holds a guest waiting for its first request (each fork emulates that read).
  void pause_at_channel_read() noexcept { pause_at_channel_read_ = true; }
  // The run's budget: Vcpu's run loop passes its budget timer's flag (null: none). Once the
  // flag is set, an exit dispatched, or a syscall that finished, ends the run with
  // deadline_exceeded: the monitor's own work for the guest counts against the guest's budget,
  // not only its time in KVM_RUN. A flag, not a clock read per exit: exits are the hot path
  // (the guest's count hook makes one per clock_gettime).
  void set_budget(const std::atomic<bool>* expired, std::uint64_t budget_ms) noexcept {
    budget_expired_ = expired;
    budget_ms_ = budget_ms;
  }

 private:
  Result<DispatchOutcome> on_syscall(kvm_regs& regs);
  Result<DispatchOutcome> on_page_fault(const kvm_regs& regs, std::uint64_t cr2);
  Error with_guest_rip(unsigned vector, const kvm_regs& regs) const;
  bool past_deadline() const noexcept { return budget_expired_ != nullptr && budget_expired_->load(); }

  SyscallContext& context_;
  bool pause_at_channel_read_ = false;
  std::optional<std::int64_t> pending_result_;  // held across the flush stub's second exit
  const std::atomic<bool>* budget_expired_ = nullptr;
  std::uint64_t budget_ms_ = 0;
};

}  // namespace sojourn::sandbox::kvm
