// The monitor's error messages, one template per cause (kvm_error.hpp).
#include "sandbox/kvm/kvm_error.hpp"

#include <cstring>

namespace sojourn::sandbox::kvm {

std::string_view cause_name(Cause cause) noexcept {
  switch (cause) {
    case Cause::none: return "none";
    case Cause::unavailable: return "unavailable";
    case Cause::bad_elf: return "bad_elf";
    case Cause::guest_memory: return "guest_memory";
    case Cause::memory_full: return "memory_full";
    case Cause::ioctl: return "ioctl";
    case Cause::guest_fault: return "guest_fault";
    case Cause::entry_failed: return "entry_failed";
    case Cause::vcpu_state: return "vcpu_state";
    case Cause::master: return "master";
    case Cause::filter: return "filter";
    case Cause::budget: return "budget";
    case Cause::bug: return "bug";
  }
  return "unknown";
}

std::string Error::message() const {
  std::string text;
  switch (cause) {
    case Cause::none: return "no error";
    case Cause::memory_full: return "memory limit of " + std::to_string(limit) + " bytes exceeded";
    case Cause::budget: return "wall-clock deadline of " + std::to_string(limit) + " ms exceeded";
    case Cause::unavailable: text = "KVM unavailable: "; break;
    case Cause::bad_elf: text = "bad guest ELF: "; break;
    case Cause::guest_memory: text = "guest memory: "; break;
    case Cause::ioctl: text = "microVM setup failed: "; break;
    case Cause::guest_fault: text = "microVM guest fault: "; break;
    case Cause::entry_failed: text = "microVM entry failed: "; break;
    case Cause::vcpu_state: text = "microVM vCPU cannot go from "; break;
    case Cause::master: text = "microVM master: "; break;
    case Cause::filter: text = "microVM monitor filter: "; break;
    case Cause::bug: text = "internal error: microVM: "; break;
  }
  text += detail;
  if (sys_errno != 0) {
    text += ": ";
    text += std::strerror(sys_errno);
  }
  return text;
}

}  // namespace sojourn::sandbox::kvm
