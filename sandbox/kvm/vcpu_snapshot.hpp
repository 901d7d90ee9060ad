// A vCPU's architectural state as a master VM leaves it, paused at its first channel read:
// what each copy-on-write fork loads into its own vCPU (and loads again on reset).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <vector>

#include "sandbox/kvm/kvm_abi.hpp"
#include "sandbox/kvm/long_mode.hpp"

namespace sojourn::sandbox::kvm {

struct VcpuSnapshot {
  kvm_regs regs{};    // RIP normalised to the syscall exit's `out` (see fork.cpp)
  kvm_sregs sregs{};  // CR0/3/4, EFER, segments: CPL 0 inside the entry stub
  kvm_xcrs xcrs{};
  abi::XsaveArea xsave{};  // x87, SSE and AVX registers, MXCSR (KVM_GET_XSAVE's 4 KiB)
  std::vector<MsrValue> msrs;  // long_mode_msrs()'s indices: STAR..KERNEL_GS_BASE, FS/GS base
};

}  // namespace sojourn::sandbox::kvm
