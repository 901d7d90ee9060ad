// The ring-0 code of the microVM: a few hand-written instructions in one supervisor page.
// They never run guest logic; each only hands control to the monitor with an `out` to a port
// (one KVM_EXIT_IO) and, where the monitor resumes it, returns to ring 3.
//
// Register convention at the syscall exit (port kSyscallPort): the guest's `syscall` has put
// its return RIP in RCX and its RFLAGS in R11 (the CPU does this), the syscall number is in
// RAX and the arguments in RDI, RSI, RDX, R10, R8, R9 (the Linux ABI). The monitor reads them
// with KVM_GET_REGS, writes the result to RAX with KVM_SET_REGS and must leave RCX and R11
// alone: the stub's `sysretq` returns to RCX with R11 as RFLAGS. RSP is the guest's own
// stack, untouched: the stub pushes nothing.
#pragma once

#include <array>
#include <cstdint>
#include <span>

namespace sojourn::sandbox::kvm {

// Offsets inside the stub page (kStubAddress).
inline constexpr std::uint64_t kSyscallEntryOffset = 0x00;     // LSTAR
inline constexpr std::uint64_t kFlushReturnOffset = 0x08;      // monitor-chosen return after a map change
inline constexpr std::uint64_t kPageFaultEntryOffset = 0x20;   // IDT vector 14
inline constexpr std::uint64_t kExceptionEntryOffset = 0x40;   // vector V at 0x40 + 4 * V (V < 32)
inline constexpr std::uint64_t kExceptionEntrySize = 4;

// The whole stub page's meaningful bytes (the rest of the page is `hlt`).
std::span<const std::uint8_t> entry_stub_code() noexcept;

// The IDT target of vector V (0..31), relative to the stub page.
constexpr std::uint64_t exception_entry_offset(unsigned vector) noexcept {
  return vector == 14 ? kPageFaultEntryOffset : kExceptionEntryOffset + kExceptionEntrySize * vector;
}

}  // namespace sojourn::sandbox::kvm
