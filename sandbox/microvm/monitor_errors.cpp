// The monitor's causes mapped to the wire's codes (monitor_errors.hpp).
#include "sandbox/microvm/monitor_errors.hpp"

namespace sojourn::sandbox {

Errc wire_code(kvm::Cause cause) noexcept {
  using kvm::Cause;
  switch (cause) {
    case Cause::none: return Errc::ok;
    case Cause::unavailable: return Errc::kvm_unavailable;
    case Cause::bad_elf: return Errc::bad_elf;
    case Cause::guest_memory: return Errc::guest_memory;
    case Cause::memory_full: return Errc::memory_limit;
    case Cause::ioctl: return Errc::vm_setup_failed;
    case Cause::guest_fault: return Errc::vm_guest_fault;
    case Cause::entry_failed: return Errc::vm_entry_failed;
    case Cause::vcpu_state: return Errc::vm_state;
    case Cause::master: return Errc::vm_master;
    case Cause::filter: return Errc::monitor_filter;
    case Cause::budget: return Errc::deadline;
    case Cause::bug: return Errc::internal;
  }
  return Errc::internal;
}

Error wire_error(const kvm::Error& error) {
  // The limits read as the other jails' do, from the same factories.
  if (error.cause == kvm::Cause::memory_full) return errors::memory_limit(error.limit);
  if (error.cause == kvm::Cause::budget) return errors::deadline(error.limit);
  return make_error(wire_code(error.cause), error.message());
}

}  // namespace sojourn::sandbox
