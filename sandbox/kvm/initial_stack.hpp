// The process stack a static glibc executable expects at its entry point (SysV x86-64 ABI,
// figure 3.9): argc, argv[], NULL, envp[], NULL, auxv pairs ending in AT_NULL, with RSP
// 16-byte aligned at argc. Strings and AT_RANDOM's 16 bytes live above the vectors.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "sandbox/kvm/address_space.hpp"
#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

struct StackInputs {
  std::vector<std::string> argv;
  std::vector<std::string> envp;
  std::array<std::uint8_t, 16> random{};  // AT_RANDOM: glibc's stack protector and pointer guard
};

struct InitialStack {
  std::uint64_t rsp = 0;         // points at argc
  std::uint64_t random_gva = 0;  // where AT_RANDOM points
};

// Reserves the stack region [kStackTop - kStackBytes, kStackTop) and writes the vectors.
Result<InitialStack> build_initial_stack(const ElfImage& image, const StackInputs& inputs, GuestMemory& memory,
                                         AddressSpace& space);

}  // namespace sojourn::sandbox::kvm
