// The two variable-length KVM structures the monitor passes, with the kernel's layout.
// In C++, Debian 12's <linux/kvm.h> (via __DECLARE_FLEX_ARRAY) gives kvm_cpuid2 and kvm_msrs
// an extra empty member: sizeof 12 and 16 with `entries` at those offsets, where the kernel
// has 8 and 8. Their ioctl numbers encode that size, so KVM_GET_SUPPORTED_CPUID fails with
// EINVAL. These headers and request numbers are the kernel's (checked below).
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace sojourn::sandbox::kvm::abi {

struct CpuidHeader {  // then `nent` kvm_cpuid_entry2
  std::uint32_t nent;
  std::uint32_t padding;
};
struct MsrsHeader {   // then `nmsrs` kvm_msr_entry
  std::uint32_t nmsrs;
  std::uint32_t pad;
};

inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);

static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16);
static_assert(kGetSupportedCpuid == 0xc008ae05 && kSetCpuid2 == 0x4008ae90 && kSetMsrs == 0x4008ae89 &&
              kGetMsrs == 0xc008ae88);

}  // namespace sojourn::sandbox::kvm::abi
