// Where the monitor's errors (kvm::Error, sandbox/kvm/kvm_error.hpp) become the wire's errors
// (sojourn::Error): the one place that decides which Errc a peer sees for a monitor failure.
#pragma once

#include "sandbox/kvm/kvm_error.hpp"
#include "sojourn/core/error.hpp"

namespace sojourn::sandbox {

// The wire code for a monitor cause (Errc::vm_guest_fault for Cause::guest_fault, ...).
Errc wire_code(kvm::Cause cause) noexcept;

// The error a peer sees: the cause's wire code with the monitor's sentence, which names guest
// addresses and ioctls but never a host address.
Error wire_error(const kvm::Error& error);

}  // namespace sojourn::sandbox
