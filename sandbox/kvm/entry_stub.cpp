// The stub's machine code, byte by byte. Encodings from the Intel SDM vol. 2:
//   out imm8, al   = E6 ib          sysretq = 48 0F 07 (REX.W 0F 07)
//   mov rax, cr3   = 0F 20 D8       mov cr3, rax = 0F 22 D8 (ModRM 11 011 000: cr3, rax)
//   add rsp, imm8  = 48 83 C4 ib    iretq = 48 CF        hlt = F4
#include "sandbox/kvm/entry_stub.hpp"

#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
constexpr std::uint8_t kHlt = 0xf4;
constexpr std::uint8_t kOutImm8 = 0xe6;

constexpr std::array<std::uint8_t, kExceptionEntryOffset + 32 * kExceptionEntrySize> build() {
  std::array<std::uint8_t, kExceptionEntryOffset + 32 * kExceptionEntrySize> code{};
  for (auto& byte : code) byte = kHlt;  // anything the monitor does not resume ends in hlt
  // 0x00, LSTAR: the guest's `syscall` lands here in ring 0 with interrupts masked (SFMASK).
  const std::uint8_t syscall_entry[] = {
      kOutImm8, kSyscallPort,  // out 0x5c, al   ; exit: the monitor emulates the syscall
      0x48, 0x0f, 0x07,        // sysretq        ; back to ring 3 at RCX, RFLAGS from R11
  };
  // 0x08: after mmap/munmap/mprotect/mremap/brk changed a mapping, the monitor resumes here
  // instead of at 0x02, so that the TLB forgets the old translations before ring 3 runs.
  const std::uint8_t flush_return[] = {
      0x0f, 0x20, 0xd8,        // mov rax, cr3   ; RAX is free: the result is written below
      0x0f, 0x22, 0xd8,        // mov cr3, rax   ; reload: flushes non-global TLB entries
      kOutImm8, kSyscallFlushPort,  // out 0x5d, al ; exit: the monitor writes the result to RAX
      0x48, 0x0f, 0x07,        // sysretq
  };
  // 0x20, vector 14: a page fault from ring 3 (RSP0 stack: error code, RIP, CS, RFLAGS, RSP, SS).
  const std::uint8_t page_fault_entry[] = {
      kOutImm8, static_cast<std::uint8_t>(kExceptionPortBase + 14),  // out 0xee, al ; monitor backs the page
      0x48, 0x83, 0xc4, 0x08,  // add rsp, 8     ; drop the error code
      0x48, 0xcf,              // iretq          ; retry the faulting instruction in ring 3
  };
  for (std::size_t i = 0; i < sizeof syscall_entry; ++i) code[kSyscallEntryOffset + i] = syscall_entry[i];
  for (std::size_t i = 0; i < sizeof flush_return; ++i) code[kFlushReturnOffset + i] = flush_return[i];
  for (std::size_t i = 0; i < sizeof page_fault_entry; ++i) code[kPageFaultEntryOffset + i] = page_fault_entry[i];
  // 0x40 + 4V: every other exception is fatal: report the vector, then stop for good.
  for (unsigned vector = 0; vector < 32; ++vector) {
    const std::size_t at = kExceptionEntryOffset + kExceptionEntrySize * vector;
    code[at] = kOutImm8;                                                  // out 0xe0+V, al
    code[at + 1] = static_cast<std::uint8_t>(kExceptionPortBase + vector);
    code[at + 2] = kHlt;                                                  // hlt (never resumed)
    code[at + 3] = kHlt;
  }
  return code;
}

constexpr auto kCode = build();
static_assert(kFlushReturnOffset >= 5 && kPageFaultEntryOffset >= kFlushReturnOffset + 11);
static_assert(kExceptionEntryOffset >= kPageFaultEntryOffset + 8);
}  // namespace

std::span<const std::uint8_t> entry_stub_code() noexcept { return kCode; }

}  // namespace sojourn::sandbox::kvm
