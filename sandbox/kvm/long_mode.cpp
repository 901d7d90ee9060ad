// The x86-64 system structures of the microVM (Intel SDM vol. 3, ch. 3, 6, 7; AMD APM vol. 2).
#include "sandbox/kvm/long_mode.hpp"

#include <cstring>
#include <vector>

#include "sandbox/kvm/entry_stub.hpp"
#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
// Segment descriptors: access byte at bits 40..47, flags (G, D/B, L) at bits 52..55; base 0
// and limit 0xfffff (ignored in 64-bit mode but checked by some VM entry paths). The accessed
// bit is preset so the CPU never writes the GDT.
constexpr std::uint64_t descriptor(std::uint64_t access, std::uint64_t flags) {
  return 0xffffULL | (access << 40) | (0xfULL << 48) | (flags << 52);
}
constexpr std::uint64_t kKernelCode = descriptor(0x9b, 0xa);  // P, DPL0, code exec/read, G + L
constexpr std::uint64_t kKernelData = descriptor(0x93, 0xc);  // P, DPL0, data read/write, G + D/B
constexpr std::uint64_t kUserCode32 = descriptor(0xfb, 0xc);  // P, DPL3, code, 32-bit (unused)
constexpr std::uint64_t kUserData = descriptor(0xf3, 0xc);    // P, DPL3, data read/write
constexpr std::uint64_t kUserCode = descriptor(0xfb, 0xa);    // P, DPL3, code, 64-bit
constexpr std::uint32_t kTssLimit = 103;                      // 104-byte TSS, no I/O bitmap

constexpr std::uint64_t kIstStack = 1;  // IDT IST field for NMI, #DF, #MC

kvm_segment user_segment(std::uint16_t selector, bool code) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffff'ffff;
  s.selector = selector;
  s.type = code ? 11 : 3;  // execute/read accessed : read/write accessed
  s.present = 1;
  s.dpl = 3;
  s.db = code ? 0 : 1;     // a 64-bit code segment must have D = 0
  s.s = 1;
  s.l = code ? 1 : 0;
  s.g = 1;
  return s;
}

Result<void> map_system_page(GuestMemory& memory, AddressSpace& space, std::uint64_t gpa, bool writable,
                             bool executable) {
  return space.tables().map_page(memory, space.pages(), gpa, gpa, PageAccess{false, writable, executable});
}
}  // namespace

std::array<std::uint64_t, 8> gdt_entries() {
  std::array<std::uint64_t, 8> gdt{};
  gdt[kKernelCodeSelector / 8] = kKernelCode;
  gdt[kKernelDataSelector / 8] = kKernelData;
  gdt[kUserCode32Selector / 8] = kUserCode32;
  gdt[kUserDataSelector / 8] = kUserData;
  gdt[kUserCodeSelector / 8] = kUserCode;
  // A 64-bit TSS descriptor is 16 bytes: base 0..23 at bits 16..39, type 0xb (busy, as TR
  // will hold it), P, base 24..31 at bits 56..63; the next entry holds base 32..63.
  const std::uint64_t base = kTssAddress;
  gdt[kTssSelector / 8] = kTssLimit | ((base & 0xff'ffff) << 16) | (0x8bULL << 40) | (((base >> 24) & 0xff) << 56);
  gdt[kTssSelector / 8 + 1] = base >> 32;
  return gdt;
}

std::array<MsrValue, 7> long_mode_msrs(std::uint64_t fs_base) {
  // STAR[47:32]: SYSCALL loads CS = 0x08, SS = 0x10. STAR[63:48] = 0x18: SYSRETQ loads
  // CS = 0x18 + 16 = 0x28 | 3 and SS = 0x18 + 8 = 0x20 | 3: hence the GDT's order.
  const std::uint64_t star = (std::uint64_t{kUserCode32Selector} << 48) | (std::uint64_t{kKernelCodeSelector} << 32);
  return {{{msr::kStar, star},
           {msr::kLstar, kStubAddress + kSyscallEntryOffset},
           {msr::kCstar, kStubAddress + exception_entry_offset(6)},  // compat-mode syscall: like #UD
           {msr::kSfmask, kSfmask},
           {msr::kFsBase, fs_base},
           {msr::kGsBase, 0},
           {msr::kKernelGsBase, 0}}};
}

std::uint64_t xcr0_for(std::uint64_t supported_xcr0) noexcept {
  constexpr std::uint64_t kX87 = 1, kSse = 2, kAvx = 4;
  std::uint64_t xcr0 = kX87 | (supported_xcr0 & kSse);
  if ((xcr0 & kSse) != 0) xcr0 |= supported_xcr0 & kAvx;  // AVX requires SSE state
  return xcr0;
}

Result<void> write_system_tables(GuestMemory& memory, AddressSpace& space) {
  // The PML4 itself (not mapped: nothing in the guest reads it).
  if (auto zeroed = memory.zero(kPml4Address, kPageSize); !zeroed) return zeroed;

  const auto gdt = gdt_entries();
  if (auto w = memory.zero(kGdtAddress, kPageSize); !w) return w;
  if (auto w = memory.write(kGdtAddress, std::as_bytes(std::span(gdt))); !w) return w;

  // IDT: 256 interrupt gates of 16 bytes; vectors 0..31 point into the stub, the rest are
  // not present (an `int N` from ring 3 is a #GP anyway: every gate has DPL 0).
  std::vector<std::uint64_t> idt(512, 0);
  for (unsigned vector = 0; vector < 32; ++vector) {
    const std::uint64_t target = kStubAddress + exception_entry_offset(vector);
    const std::uint64_t ist = (vector == 2 || vector == 8 || vector == 18) ? kIstStack : 0;
    idt[2 * vector] = (target & 0xffff) | (std::uint64_t{kKernelCodeSelector} << 16) | (ist << 32) |
                      (0x8eULL << 40) | (((target >> 16) & 0xffff) << 48);  // P, DPL0, 64-bit interrupt gate
    idt[2 * vector + 1] = target >> 32;
  }
  if (auto w = memory.write(kIdtAddress, std::as_bytes(std::span(idt))); !w) return w;

  // TSS: RSP0 at offset 4, IST1 at 36, I/O map base at 102 (= limit + 1: no bitmap, so ring 3
  // has no port access at all).
  if (auto w = memory.zero(kTssAddress, kPageSize); !w) return w;
  if (auto w = memory.write_u64(kTssAddress + 4, kRing0StackTop); !w) return w;
  if (auto w = memory.write_u64(kTssAddress + 36, kIstStackTop); !w) return w;
  const std::uint16_t iomap = kTssLimit + 1;
  if (auto w = memory.write(kTssAddress + 102, std::as_bytes(std::span(&iomap, 1))); !w) return w;

  const auto stub = entry_stub_code();
  if (auto w = memory.zero(kStubAddress, kPageSize); !w) return w;
  std::vector<std::byte> page(kPageSize, std::byte{0xf4});
  // SAFETY: the stub (0xc0 bytes) is smaller than the page-sized buffer.
  std::memcpy(page.data(), stub.data(), stub.size());
  if (auto w = memory.write(kStubAddress, page); !w) return w;
  if (auto w = memory.zero(kRing0StackTop - kPageSize, 2 * kPageSize); !w) return w;

  struct SystemPage { std::uint64_t gpa; bool writable; bool executable; };
  const SystemPage pages[] = {
      {kGdtAddress, false, false},                 // descriptors preset accessed: never written
      {kIdtAddress, false, false},
      {kTssAddress, false, false},
      {kStubAddress, false, true},                 // the only executable supervisor page
      {kRing0StackTop - kPageSize, true, false},   // exception frames from ring 3
      {kIstStackTop - kPageSize, true, false},
  };
  for (const auto& p : pages) {
    if (auto mapped = map_system_page(memory, space, p.gpa, p.writable, p.executable); !mapped) return mapped;
  }
  return {};
}

std::uint64_t cr4_for(std::uint32_t leaf7_ebx) noexcept {
  std::uint64_t cr4 = kCr4;
  if ((leaf7_ebx & cpuid7_ebx::kSmep) != 0) cr4 |= cr4::kSmep;
  if ((leaf7_ebx & cpuid7_ebx::kSmap) != 0) cr4 |= cr4::kSmap;
  return cr4;
}

void set_long_mode_sregs(kvm_sregs& sregs, std::uint64_t cr4) {
  sregs.cr0 = kCr0;
  sregs.cr3 = kPml4Address;
  sregs.cr4 = cr4;
  sregs.efer = kEfer;
  sregs.cs = user_segment(kUserCodeSelector, true);
  sregs.ss = user_segment(kUserDataSelector, false);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss;
  sregs.tr = kvm_segment{};
  sregs.tr.base = kTssAddress;
  sregs.tr.limit = kTssLimit;
  sregs.tr.selector = kTssSelector;
  sregs.tr.type = 11;  // busy 64-bit TSS
  sregs.tr.present = 1;
  sregs.gdt.base = kGdtAddress;
  sregs.gdt.limit = 8 * 8 - 1;
  sregs.idt.base = kIdtAddress;
  sregs.idt.limit = 256 * 16 - 1;
}

std::string_view exception_name(unsigned vector) noexcept {
  static constexpr std::string_view kNames[32] = {
      "#DE (divide error)", "#DB (debug)", "NMI", "#BP (breakpoint)", "#OF (overflow)",
      "#BR (bound range exceeded)", "#UD (invalid opcode)", "#NM (device not available)",
      "#DF (double fault)", "coprocessor segment overrun", "#TS (invalid TSS)", "#NP (segment not present)",
      "#SS (stack-segment fault)", "#GP (general protection)", "#PF (page fault)", "vector 15",
      "#MF (x87 floating-point error)", "#AC (alignment check)", "#MC (machine check)",
      "#XM (SIMD floating-point exception)", "#VE (virtualization exception)", "#CP (control protection)",
      "vector 22", "vector 23", "vector 24", "vector 25", "vector 26", "vector 27",
      "#HV (hypervisor injection)", "#VC (VMM communication)", "#SX (security exception)", "vector 31"};
  return vector < 32 ? kNames[vector] : std::string_view("vector out of range");
}

bool exception_has_error_code(unsigned vector) noexcept {
  switch (vector) {
    case 8: case 10: case 11: case 12: case 13: case 14: case 17: case 21: case 29: case 30: return true;
    default: return false;
  }
}

}  // namespace sojourn::sandbox::kvm
