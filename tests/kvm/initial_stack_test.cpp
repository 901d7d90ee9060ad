// Tests of the initial stack: the SysV x86-64 layout a static glibc _start reads.
#include <doctest/doctest.h>

#include <elf.h>

#include <map>

#include "sandbox/kvm/initial_stack.hpp"
#include "sandbox/kvm/layout.hpp"
#include "tests/kvm/kvm_test_support.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn::sandbox::kvm;
using kvm_test::TestVm;

namespace {
std::uint64_t word(TestVm& vm, std::uint64_t gva) {
  std::uint64_t value = 0;
  REQUIRE(vm.state.space.copy_from_guest(vm.memory, gva, std::as_writable_bytes(std::span(&value, 1))));
  return value;
}

std::string string_at(TestVm& vm, std::uint64_t gva) {
  std::string s;
  for (char c = 0;; ++gva) {
    REQUIRE(vm.state.space.copy_from_guest(vm.memory, gva, std::as_writable_bytes(std::span(&c, 1))));
    if (c == 0) return s;
    s += c;
  }
}

ElfImage sample_image() {
  ElfImage image;
  image.entry = 0x401000;
  image.phdr_vaddr = 0x400040;
  image.phnum = 10;
  return image;
}
}  // namespace

TEST_CASE("the initial stack holds argc, argv, envp and auxv at a 16-byte aligned RSP") {
  TestVm vm;
  StackInputs inputs{{"sojourn-guest", "--serve"}, {"LANG=C"}, {}};
  for (std::uint8_t i = 0; i < 16; ++i) inputs.random[i] = static_cast<std::uint8_t>(0xa0 + i);
  auto stack = build_initial_stack(sample_image(), inputs, vm.memory, vm.state.space);
  REQUIRE(stack.ok());
  const std::uint64_t rsp = stack->rsp;
  CHECK(rsp % 16 == 0);
  CHECK(rsp < kStackTop);
  CHECK(rsp > kStackTop - 8192);
  CHECK(word(vm, rsp) == 2);
  CHECK(string_at(vm, word(vm, rsp + 8)) == "sojourn-guest");
  CHECK(string_at(vm, word(vm, rsp + 16)) == "--serve");
  CHECK(word(vm, rsp + 24) == 0);
  CHECK(string_at(vm, word(vm, rsp + 32)) == "LANG=C");
  CHECK(word(vm, rsp + 40) == 0);

  std::map<std::uint64_t, std::uint64_t> auxv;
  std::uint64_t at = rsp + 48;
  std::uint64_t last_type = 1;
  for (; last_type != AT_NULL; at += 16) {
    last_type = word(vm, at);
    auxv[last_type] = word(vm, at + 8);
  }
  CHECK(auxv.at(AT_PHDR) == 0x400040);
  CHECK(auxv.at(AT_PHENT) == 56);
  CHECK(auxv.at(AT_PHNUM) == 10);
  CHECK(auxv.at(AT_PAGESZ) == 4096);
  CHECK(auxv.at(AT_ENTRY) == 0x401000);
  CHECK(auxv.at(AT_SECURE) == 0);
  CHECK(auxv.at(AT_RANDOM) == stack->random_gva);
  CHECK(auxv.count(AT_SYSINFO_EHDR) == 0);  // no vDSO in the microVM
  CHECK(string_at(vm, auxv.at(AT_EXECFN)) == "sojourn-guest");
  std::uint8_t random[16];
  REQUIRE(vm.state.space.copy_from_guest(vm.memory, stack->random_gva, std::as_writable_bytes(std::span(random))));
  CHECK(random[0] == 0xa0);
  CHECK(random[15] == 0xaf);
}

TEST_CASE("the stack region is reserved below the stack top and backed only where written") {
  TestVm vm;
  REQUIRE(build_initial_stack(sample_image(), {{"g"}, {}, {}}, vm.memory, vm.state.space).ok());
  std::uint64_t start = 0;
  const Region* region = vm.state.space.region_at(kStackTop - kStackBytes, &start);
  REQUIRE(region != nullptr);
  CHECK(start == kStackTop - kStackBytes);
  CHECK(region->end == kStackTop);
  CHECK(region->prot == (kProtRead | kProtWrite));
  CHECK_FALSE(vm.state.space.tables().translate(vm.memory, kStackTop - kStackBytes).value().has_value());
  auto top = vm.state.space.tables().translate(vm.memory, kStackTop - 8).value();
  REQUIRE(top.has_value());
  CHECK(top->access == PageAccess{true, true, false});
}

TEST_CASE("an argv too large for the start pages is refused") {
  TestVm vm;
  auto stack = build_initial_stack(sample_image(), {{std::string(9000, 'a')}, {}, {}}, vm.memory, vm.state.space);
  REQUIRE_FALSE(stack.ok());
  CHECK_ERROR(stack, Cause::guest_memory, "8192 bytes of stack");
}
