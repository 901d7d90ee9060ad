// A fork's own stack-protector canary: the TCB's, and the paused frames' copies above RSP.
#include <doctest/doctest.h>

#include <array>
#include <cstring>

#include "sandbox/kvm/fork_secrets.hpp"
#include "sandbox/kvm/layout.hpp"
#include "tests/kvm/kvm_test_support.hpp"
#include "tests/support/error_checks.hpp"

namespace {

using namespace kvm_test;

constexpr std::uint64_t kOldCanary = 0x1122'3344'5566'7700ULL;
constexpr std::uint64_t kTcbPage = 0x0060'0000;
constexpr std::uint64_t kRsp = kStackTop - 0x3000 + 0x18;

std::uint64_t read_word(TestVm& vm, std::uint64_t gva) {
  std::uint64_t word = 0;
  REQUIRE(vm.state.space.copy_from_guest(vm.memory, gva, std::as_writable_bytes(std::span(&word, 1))));
  return word;
}

void write_word(TestVm& vm, std::uint64_t gva, std::uint64_t word) {
  REQUIRE(vm.state.space.copy_to_guest(vm.memory, gva, bytes_of(word)));
}

// A paused guest: a TCB with the canary, frames above RSP holding copies of it.
void paused_guest(TestVm& vm) {
  REQUIRE(vm.state.space.reserve(kStackTop - kStackBytes, kStackBytes, kProtRead | kProtWrite).ok());
  REQUIRE(vm.state.space.reserve(kTcbPage, kPageSize, kProtRead | kProtWrite).ok());
  vm.state.fs_base = kTcbPage + 0x100;
  write_word(vm, vm.state.fs_base + kTcbStackGuardOffset, kOldCanary);
  write_word(vm, vm.state.fs_base + kTcbPointerGuardOffset, 0xabcdef);
  const std::vector<std::byte> zeros(0x3000 + 0x100);
  REQUIRE(vm.state.space.copy_to_guest(vm.memory, kStackTop - zeros.size(), zeros));  // backs every page
  write_word(vm, kRsp + 0x10, kOldCanary);            // a frame right above RSP
  write_word(vm, kStackTop - 0x200, kOldCanary);      // one near the top
  write_word(vm, kRsp - 0x18, kOldCanary);            // below RSP: a dead frame, left alone
  write_word(vm, kStackTop - 0x1000 + 4, 0x7700);     // not a copy (and not aligned)
  vm.state.at_random = kStackTop - 0x40;
  const std::array<std::uint8_t, 16> seen{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  REQUIRE(vm.state.space.copy_to_guest(vm.memory, vm.state.at_random, std::as_bytes(std::span(seen))));
}

void counting_random(std::span<std::byte> out) {
  static std::uint8_t next = 0x31;
  for (auto& b : out) b = static_cast<std::byte>(next++);
}

}  // namespace

TEST_CASE("a fork gets its own canary, in the TCB and in every paused frame above RSP") {
  TestVm vm;
  paused_guest(vm);
  auto report = reseed_fork_secrets(vm.memory, vm.state, kRsp, counting_random);
  REQUIRE(report.ok());
  CHECK(report->old_canary == kOldCanary);
  CHECK(report->new_canary != kOldCanary);
  CHECK((report->new_canary & 0xff) == 0);  // glibc's zero low byte
  CHECK(report->stack_copies == 2);
  CHECK(read_word(vm, vm.state.fs_base + kTcbStackGuardOffset) == report->new_canary);
  CHECK(read_word(vm, kRsp + 0x10) == report->new_canary);
  CHECK(read_word(vm, kStackTop - 0x200) == report->new_canary);
  CHECK(read_word(vm, kRsp - 0x18) == kOldCanary);
  CHECK(read_word(vm, vm.state.fs_base + kTcbPointerGuardOffset) == 0xabcdef);  // the pointer guard stays
  std::array<std::uint8_t, 16> random_now{};
  REQUIRE(vm.state.space.copy_from_guest(vm.memory, vm.state.at_random, std::as_writable_bytes(std::span(random_now))));
  CHECK(random_now[0] != 1);
  // A second reseed (a reset) replaces the new canary in turn.
  auto again = reseed_fork_secrets(vm.memory, vm.state, kRsp, counting_random);
  REQUIRE(again.ok());
  CHECK(again->old_canary == report->new_canary);
  CHECK(again->stack_copies == 2);
}

TEST_CASE("reseeding refuses a guest without a TCB or a stack pointer outside the stack") {
  TestVm vm;
  paused_guest(vm);
  vm.state.fs_base = 0;
  auto no_tcb = reseed_fork_secrets(vm.memory, vm.state, kRsp, counting_random);
  REQUIRE_FALSE(no_tcb.ok());
  CHECK_ERROR(no_tcb, Cause::guest_memory, "fork secrets", "thread control block");
  vm.state.fs_base = kTcbPage + 0x100;
  auto wild = reseed_fork_secrets(vm.memory, vm.state, 0x1000, counting_random);
  REQUIRE_FALSE(wild.ok());
  CHECK_ERROR(wild, Cause::guest_memory, "fork secrets", "RSP 0x1000");
  CHECK(read_word(vm, vm.state.fs_base + kTcbStackGuardOffset) == kOldCanary);  // nothing changed
}
