// Exit reasons to actions and precise errors.
#include "sandbox/kvm/vcpu_exit.hpp"

#include <string>

#include "sandbox/kvm/hex.hpp"
#include "sandbox/kvm/layout.hpp"
#include "sandbox/kvm/long_mode.hpp"

namespace sojourn::sandbox::kvm {

namespace {
Error fault(const std::string& what) { return fail(Cause::guest_fault, what); }
Error entry(const std::string& what) { return fail(Cause::entry_failed, what); }

std::string internal_suberror(std::uint32_t suberror) {
  switch (suberror) {
    case KVM_INTERNAL_ERROR_EMULATION: return "emulation failure";
    case KVM_INTERNAL_ERROR_SIMUL_EX: return "exception while delivering an exception";
    case KVM_INTERNAL_ERROR_DELIVERY_EV: return "exit while delivering an event";
    case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: return "unexpected hardware exit reason";
    default: return "unknown suberror";
  }
}

ExitAction handle_io(const kvm_run& run) {
  const auto& io = run.io;
  if (io.direction != KVM_EXIT_IO_OUT || io.size != 1 || io.count != 1) {
    return ExitAction::fail(fault("unexpected port I/O (" + std::string(io.direction == KVM_EXIT_IO_OUT ? "out" : "in") +
                                  ", port " + hex(io.port) + ", size " + std::to_string(io.size) + ")"));
  }
  if (io.port == kSyscallPort) return ExitAction::of(ExitAction::Kind::syscall);
  if (io.port == kSyscallFlushPort) return ExitAction::of(ExitAction::Kind::syscall_result);
  if (io.port == kExceptionPortBase + 14) return ExitAction::of(ExitAction::Kind::page_fault);
  if (io.port >= kExceptionPortBase && io.port < kExceptionPortBase + 32) {
    const unsigned vector = io.port - kExceptionPortBase;
    return ExitAction::fail(fault(std::string(exception_name(vector))), static_cast<int>(vector));
  }
  return ExitAction::fail(fault("unexpected port I/O (out, port " + hex(io.port) + ", size 1)"));
}
}  // namespace

ExitAction handle_exit(const kvm_run& run, const ExitContext& context) {
  switch (run.exit_reason) {
    case KVM_EXIT_IO:
      return handle_io(run);
    case KVM_EXIT_HLT:
      return ExitAction::fail(fault("the vCPU halted (hlt in ring 0 after a fatal exception)"));
    case KVM_EXIT_SHUTDOWN:
      return ExitAction::fail(fault("triple fault (KVM_EXIT_SHUTDOWN)"));
    case KVM_EXIT_MMIO:
      return ExitAction::fail(fault(std::string(run.mmio.is_write ? "write of " : "read of ") +
                                    std::to_string(run.mmio.len) + " bytes at guest-physical " +
                                    hex(run.mmio.phys_addr) + ", outside guest memory"));
    case KVM_EXIT_FAIL_ENTRY:
      return ExitAction::fail(entry("hardware entry failure reason " +
                                    hex(run.fail_entry.hardware_entry_failure_reason) + " on cpu " +
                                    std::to_string(run.fail_entry.cpu)));
    case KVM_EXIT_INTERNAL_ERROR:
      return ExitAction::fail(entry("KVM internal error " + std::to_string(run.internal.suberror) + " (" +
                                    internal_suberror(run.internal.suberror) + ")"));
    case KVM_EXIT_INTR:
      if (context.budget_expired) {
        return ExitAction::fail(deadline_exceeded(context.budget_ms));
      }
      return ExitAction::of(ExitAction::Kind::resume);
    default:
      return ExitAction::fail(entry("unexpected exit reason " + std::to_string(run.exit_reason)));
  }
}

Error guest_exception_error(unsigned vector, std::uint64_t rip) {
  return fault(std::string(exception_name(vector)) + " at rip " + hex(rip));
}

Error deadline_exceeded(std::uint64_t budget_ms) {
  // The same error as the process jail's, so the node does not care which jail ran it.
  return over_limit(Cause::budget, budget_ms);
}

}  // namespace sojourn::sandbox::kvm
