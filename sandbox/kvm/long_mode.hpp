// 64-bit mode without a guest kernel: the GDT, IDT and TSS the monitor writes into guest
// memory, the supervisor mappings of the system pages, and the control registers, segments
// and MSRs as plain values for KVM_SET_SREGS / KVM_SET_MSRS / KVM_SET_XCRS.
#pragma once

#include <linux/kvm.h>

#include <array>
#include <cstdint>
#include <string_view>

#include "sandbox/kvm/address_space.hpp"
#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

namespace cr0 {
inline constexpr std::uint64_t kProtectionEnable = 1ULL << 0;
inline constexpr std::uint64_t kMonitorCoprocessor = 1ULL << 1;
inline constexpr std::uint64_t kExtensionType = 1ULL << 4;
inline constexpr std::uint64_t kNumericError = 1ULL << 5;
inline constexpr std::uint64_t kWriteProtect = 1ULL << 16;  // ring 0 honours read-only pages too
inline constexpr std::uint64_t kPaging = 1ULL << 31;
}  // namespace cr0
namespace cr4 {
inline constexpr std::uint64_t kPae = 1ULL << 5;
inline constexpr std::uint64_t kOsFxsr = 1ULL << 9;         // SSE
inline constexpr std::uint64_t kOsXmmExcpt = 1ULL << 10;
inline constexpr std::uint64_t kOsXsave = 1ULL << 18;       // XSAVE/XGETBV (glibc probes AVX with it)
inline constexpr std::uint64_t kSmep = 1ULL << 20;          // ring 0 never executes a user page
inline constexpr std::uint64_t kSmap = 1ULL << 21;          // ring 0 never reads or writes one (AC clear)
}  // namespace cr4
// CPUID leaf 7, subleaf 0, EBX: the feature bits of SMEP and SMAP.
namespace cpuid7_ebx {
inline constexpr std::uint32_t kSmep = 1U << 7;
inline constexpr std::uint32_t kSmap = 1U << 20;
}  // namespace cpuid7_ebx
namespace efer {
inline constexpr std::uint64_t kSyscallEnable = 1ULL << 0;
inline constexpr std::uint64_t kLongModeEnable = 1ULL << 8;
inline constexpr std::uint64_t kLongModeActive = 1ULL << 10;
inline constexpr std::uint64_t kNoExecuteEnable = 1ULL << 11;
}  // namespace efer
namespace msr {
inline constexpr std::uint32_t kStar = 0xc000'0081;
inline constexpr std::uint32_t kLstar = 0xc000'0082;
inline constexpr std::uint32_t kCstar = 0xc000'0083;
inline constexpr std::uint32_t kSfmask = 0xc000'0084;
inline constexpr std::uint32_t kFsBase = 0xc000'0100;
inline constexpr std::uint32_t kGsBase = 0xc000'0101;
inline constexpr std::uint32_t kKernelGsBase = 0xc000'0102;
}  // namespace msr

inline constexpr std::uint64_t kCr0 = cr0::kProtectionEnable | cr0::kMonitorCoprocessor | cr0::kExtensionType |
                                      cr0::kNumericError | cr0::kWriteProtect | cr0::kPaging;
inline constexpr std::uint64_t kCr4 = cr4::kPae | cr4::kOsFxsr | cr4::kOsXmmExcpt | cr4::kOsXsave;
inline constexpr std::uint64_t kEfer =
    efer::kSyscallEnable | efer::kLongModeEnable | efer::kLongModeActive | efer::kNoExecuteEnable;
// RFLAGS bits cleared on `syscall`: TF, DF, IF, IOPL, NT, AC (what Linux masks).
inline constexpr std::uint64_t kSfmask = 0x47700;
// Initial RFLAGS of ring 3: only the reserved bit 1; interrupts stay off (there are none).
inline constexpr std::uint64_t kInitialRflags = 0x2;

struct MsrValue {
  std::uint32_t index;
  std::uint64_t value;
};
// STAR, LSTAR, CSTAR, SFMASK and the segment bases, in this order.
std::array<MsrValue, 7> long_mode_msrs(std::uint64_t fs_base);

// XCR0 for KVM_SET_XCRS: x87, SSE and AVX where the host (KVM_GET_SUPPORTED_CPUID leaf 0xD)
// supports them; x87 always.
std::uint64_t xcr0_for(std::uint64_t supported_xcr0) noexcept;

// Writes GDT, IDT, TSS and the entry stub into guest memory and maps the system pages
// (GVA == GPA, supervisor-only) in the address space's page tables.
Result<void> write_system_tables(GuestMemory& memory, AddressSpace& space);

// CR4 for a vCPU whose CPUID leaf 7 EBX is `leaf7_ebx`: kCr4, plus SMEP and SMAP where the
// CPU has them. Ring 0 is only the entry stub, which touches no user page (syscall's SFMASK
// clears AC), so with them a flaw in the stub or in an exception path cannot be steered into
// guest-supplied code or data.
std::uint64_t cr4_for(std::uint32_t leaf7_ebx) noexcept;

// Fills the fields of `sregs` the monitor owns (control registers, EFER, all segments, GDT,
// IDT); the rest (APIC base, interrupt bitmap) stays what KVM_GET_SREGS returned. The vCPU
// then starts in ring 3 with CS:RIP at the ELF entry.
void set_long_mode_sregs(kvm_sregs& sregs, std::uint64_t cr4 = kCr4);

// The 8-byte GDT descriptors, index by selector / 8 (the TSS takes entries 6 and 7).
std::array<std::uint64_t, 8> gdt_entries();

// "#PF (page fault)" for vector 14; "vector N" for reserved vectors.
std::string_view exception_name(unsigned vector) noexcept;
bool exception_has_error_code(unsigned vector) noexcept;

}  // namespace sojourn::sandbox::kvm
