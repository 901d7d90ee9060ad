// The variable-length KVM structures the monitor passes, with the kernel's layout.
// In C++, Debian 12's <linux/kvm.h> (via __DECLARE_FLEX_ARRAY) gives kvm_cpuid2 and kvm_msrs
// an extra empty member: sizeof 12 and 16 with `entries` at those offsets, where the kernel
// has 8 and 8; kvm_xsave (4096 bytes and a flexible `extra[]`) becomes 4100. Their ioctl
// numbers encode that size, so KVM_GET_SUPPORTED_CPUID and KVM_GET_XSAVE fail with EINVAL.
// These structures and request numbers are the kernel's (checked below).
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

struct XsaveArea {    // kvm_xsave without `extra[]`: what KVM_GET/SET_XSAVE move
  std::uint32_t region[1024];
};

inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, XsaveArea);
inline constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, XsaveArea);

static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16);
static_assert(kGetSupportedCpuid == 0xc008ae05 && kSetCpuid2 == 0x4008ae90 && kSetMsrs == 0x4008ae89 &&
              kGetMsrs == 0xc008ae88);
static_assert(sizeof(XsaveArea) == 4096 && kGetXsave == 0x9000aea4 && kSetXsave == 0x5000aea5);

}  // namespace sojourn::sandbox::kvm::abi
