// Everything the host writes before a vCPU's first KVM_RUN: system tables, the guest ELF,
// the brk start and the initial stack. Pure over GuestMemory: tested without /dev/kvm.
#pragma once

#include <cstdint>
#include <span>

#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/initial_stack.hpp"
#include "sandbox/kvm/syscall_table.hpp"

namespace sojourn::sandbox::kvm {

struct BootRegisters {
  std::uint64_t rip = 0;  // the ELF entry point
  std::uint64_t rsp = 0;  // at argc
};

Result<BootRegisters> prepare_guest(std::span<const std::byte> elf, const StackInputs& stack, GuestMemory& memory,
                                    GuestState& state);

}  // namespace sojourn::sandbox::kvm
