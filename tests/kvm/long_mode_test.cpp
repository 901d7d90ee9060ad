// Tests of the x86-64 system structures: checked by decoding what was written to guest
// memory and by a software page walk, as the CPU would see them.
#include <doctest/doctest.h>

#include <vector>

#include "sandbox/kvm/entry_stub.hpp"
#include "sandbox/kvm/kvm_abi.hpp"
#include "sandbox/kvm/layout.hpp"
#include "tests/kvm/kvm_test_support.hpp"

using namespace sojourn::sandbox::kvm;
using kvm_test::TestVm;

namespace {
unsigned dpl(std::uint64_t d) { return (d >> 45) & 3; }
bool long_bit(std::uint64_t d) { return ((d >> 53) & 1) != 0; }
bool code_bit(std::uint64_t d) { return ((d >> 43) & 1) != 0; }
bool present(std::uint64_t d) { return ((d >> 47) & 1) != 0; }

std::uint64_t msr_value(std::uint32_t index) {
  for (const auto& m : long_mode_msrs(0x1234)) {
    if (m.index == index) return m.value;
  }
  FAIL("no such MSR");
  return 0;
}
}  // namespace

TEST_CASE("the system pages are mapped at their physical address for ring 0 only") {
  TestVm vm;
  const auto& tables = vm.state.space.tables();
  for (std::uint64_t page : {kGdtAddress, kIdtAddress, kTssAddress, kStubAddress, std::uint64_t{0x5000}, std::uint64_t{0x6000}}) {
    auto t = tables.translate(vm.memory, page).value();
    REQUIRE(t.has_value());
    CHECK(t->gpa == page);
    CHECK_FALSE(t->access.user);
  }
  CHECK(tables.translate(vm.memory, kStubAddress).value()->access == PageAccess{false, false, true});
  CHECK(tables.translate(vm.memory, kGdtAddress).value()->access == PageAccess{false, false, false});
  CHECK(tables.translate(vm.memory, 0x5000).value()->access == PageAccess{false, true, false});
  CHECK_FALSE(tables.translate(vm.memory, 0).value().has_value());             // null page
  CHECK_FALSE(tables.translate(vm.memory, kPml4Address).value().has_value());  // page tables are invisible
}

TEST_CASE("the GDT has ring 0 and ring 3 code and data in the order SYSCALL and SYSRET need") {
  const auto gdt = gdt_entries();
  CHECK(gdt[0] == 0);
  const auto kcode = gdt[kKernelCodeSelector / 8], kdata = gdt[kKernelDataSelector / 8];
  const auto ucode = gdt[kUserCodeSelector / 8], udata = gdt[kUserDataSelector / 8];
  CHECK((present(kcode) && code_bit(kcode) && long_bit(kcode) && dpl(kcode) == 0));
  CHECK((present(kdata) && !code_bit(kdata) && dpl(kdata) == 0));
  CHECK((present(ucode) && code_bit(ucode) && long_bit(ucode) && dpl(ucode) == 3));
  CHECK((present(udata) && !code_bit(udata) && dpl(udata) == 3));

  const std::uint64_t star = msr_value(msr::kStar);
  const auto syscall_cs = static_cast<std::uint16_t>((star >> 32) & 0xffff);
  const auto sysret_base = static_cast<std::uint16_t>(star >> 48);
  CHECK(syscall_cs == kKernelCodeSelector);
  CHECK(syscall_cs + 8 == kKernelDataSelector);
  CHECK(((sysret_base + 16) | 3) == kUserCodeSelector);
  CHECK(((sysret_base + 8) | 3) == kUserDataSelector);
}

TEST_CASE("the TSS descriptor points at the TSS, which holds the ring-0 and IST stacks") {
  TestVm vm;
  const auto gdt = gdt_entries();
  const std::uint64_t low = gdt[kTssSelector / 8], high = gdt[kTssSelector / 8 + 1];
  const std::uint64_t base = ((low >> 16) & 0xff'ffff) | (((low >> 56) & 0xff) << 24) | (high << 32);
  CHECK(base == kTssAddress);
  CHECK((low & 0xffff) == 103);
  CHECK(((low >> 40) & 0xff) == 0x8b);
  CHECK(vm.memory.read_u64(kTssAddress + 4).value() == kRing0StackTop);
  CHECK(vm.memory.read_u64(kTssAddress + 36).value() == kIstStackTop);
  CHECK((vm.memory.read_u64(kTssAddress + 96).value() >> 48) == 104);  // I/O map base: no bitmap
}

TEST_CASE("IDT gates send each exception to its stub in ring 0, double faults on the IST stack") {
  TestVm vm;
  for (unsigned vector : {0u, 6u, 8u, 13u, 14u, 31u}) {
    const std::uint64_t low = vm.memory.read_u64(kIdtAddress + 16 * vector).value();
    const std::uint64_t high = vm.memory.read_u64(kIdtAddress + 16 * vector + 8).value();
    const std::uint64_t target = (low & 0xffff) | (((low >> 48) & 0xffff) << 16) | (high << 32);
    CHECK(target == kStubAddress + exception_entry_offset(vector));
    CHECK(((low >> 16) & 0xffff) == kKernelCodeSelector);
    CHECK(((low >> 40) & 0xff) == 0x8e);
    CHECK(((low >> 32) & 7) == (vector == 8 ? 1u : 0u));
  }
  CHECK(vm.memory.read_u64(kIdtAddress + 16 * 32).value() == 0);  // no gate past 31
}

TEST_CASE("CR4 gets SMEP and SMAP exactly where CPUID leaf 7 has them") {
  CHECK(cr4_for(0) == kCr4);
  CHECK(cr4_for(cpuid7_ebx::kSmep) == (kCr4 | (1ULL << 20)));
  CHECK(cr4_for(cpuid7_ebx::kSmap) == (kCr4 | (1ULL << 21)));
  CHECK(cr4_for(cpuid7_ebx::kSmep | cpuid7_ebx::kSmap | 0x1) == 0x340620);
  CHECK(cr4_for(~(cpuid7_ebx::kSmep | cpuid7_ebx::kSmap)) == kCr4);  // no other bit of EBX matters
  kvm_sregs sregs{};
  set_long_mode_sregs(sregs, cr4_for(cpuid7_ebx::kSmep | cpuid7_ebx::kSmap));
  CHECK(sregs.cr4 == 0x340620);
  // syscall clears AC: with SMAP, the stub could not touch a user page even by mistake.
  CHECK((kSfmask & (1ULL << 18)) != 0);
}

TEST_CASE("the special registers start the vCPU in 64-bit ring 3 with paging, NX and SYSCALL on") {
  kvm_sregs sregs{};
  sregs.apic_base = 0xfee00900;
  set_long_mode_sregs(sregs);
  CHECK(sregs.cr0 == 0x80010033);
  CHECK(sregs.cr3 == kPml4Address);
  CHECK(sregs.cr4 == 0x40620);
  CHECK(sregs.efer == 0xd01);
  CHECK((sregs.cs.selector == kUserCodeSelector && sregs.cs.dpl == 3 && sregs.cs.l == 1 && sregs.cs.db == 0));
  CHECK((sregs.ss.selector == kUserDataSelector && sregs.ss.dpl == 3 && sregs.ss.type == 3));
  CHECK((sregs.tr.selector == kTssSelector && sregs.tr.type == 11 && sregs.tr.base == kTssAddress));
  CHECK((sregs.gdt.base == kGdtAddress && sregs.gdt.limit == 63));
  CHECK((sregs.idt.base == kIdtAddress && sregs.idt.limit == 4095));
  CHECK(sregs.apic_base == 0xfee00900);  // left as KVM gave it
}

TEST_CASE("the MSRs send syscall to the stub with interrupts, traps and direction masked") {
  CHECK(msr_value(msr::kLstar) == kStubAddress + kSyscallEntryOffset);
  CHECK(msr_value(msr::kSfmask) == 0x47700);
  CHECK(msr_value(msr::kFsBase) == 0x1234);
  CHECK(xcr0_for(0x2e7) == 7);
  CHECK(xcr0_for(0x3) == 3);
  CHECK(xcr0_for(0x5) == 1);  // AVX without SSE state is not allowed
}

TEST_CASE("the entry stub's bytes are the instructions its comments name") {
  const auto code = entry_stub_code();
  const std::vector<std::uint8_t> syscall_entry(code.begin(), code.begin() + 5);
  CHECK(syscall_entry == std::vector<std::uint8_t>{0xe6, 0x5c, 0x48, 0x0f, 0x07});
  const std::vector<std::uint8_t> flush(code.begin() + 8, code.begin() + 19);
  CHECK(flush == std::vector<std::uint8_t>{0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0xe6, 0x5d, 0x48, 0x0f, 0x07});
  const std::vector<std::uint8_t> page_fault(code.begin() + 0x20, code.begin() + 0x28);
  CHECK(page_fault == std::vector<std::uint8_t>{0xe6, 0xee, 0x48, 0x83, 0xc4, 0x08, 0x48, 0xcf});
  const std::vector<std::uint8_t> invalid_opcode(code.begin() + 0x40 + 4 * 6, code.begin() + 0x40 + 4 * 6 + 4);
  CHECK(invalid_opcode == std::vector<std::uint8_t>{0xe6, 0xe6, 0xf4, 0xf4});
  TestVm vm;
  CHECK(vm.memory.read_u64(kStubAddress).value() == 0xf4f4f4070f485ce6);  // in guest memory, rest is hlt
}

TEST_CASE("exceptions have names and the CPU's error-code rule") {
  CHECK(exception_name(14) == "#PF (page fault)");
  CHECK(exception_name(6) == "#UD (invalid opcode)");
  CHECK(exception_name(40) == "vector out of range");
  CHECK(exception_has_error_code(14));
  CHECK(exception_has_error_code(8));
  CHECK_FALSE(exception_has_error_code(6));
}

TEST_CASE("the variable-length KVM structures use the kernel's layout, not the C++ header's") {
  // <linux/kvm.h> in C++ adds an empty member before `entries`; the kernel has none.
  CHECK(sizeof(kvm_cpuid2) != sizeof(abi::CpuidHeader));
  CHECK(abi::kGetSupportedCpuid == 0xc008ae05UL);
  CHECK(abi::kSetCpuid2 == 0x4008ae90UL);
  CHECK(abi::kSetMsrs == 0x4008ae89UL);
  CHECK(abi::kGetMsrs == 0xc008ae88UL);
  // kvm_xsave's flexible `extra[]` makes it 4100 bytes in C++: the header's numbers are wrong.
  CHECK(sizeof(abi::XsaveArea) == 4096);
  CHECK(abi::kGetXsave == 0x9000aea4UL);
  CHECK(abi::kSetXsave == 0x5000aea5UL);
}
