// Tests of the page tables through the software page walk, and of the address space's
// regions, lazy backing and fault resolution.
#include <doctest/doctest.h>

#include "sandbox/kvm/address_space.hpp"
#include "sandbox/kvm/layout.hpp"
#include "tests/kvm/kvm_test_support.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn::sandbox::kvm;
using kvm_test::TestVm;

TEST_CASE("a mapped page translates to its physical page with the access it was given") {
  TestVm vm;
  auto& tables = vm.state.space.tables();
  const std::uint64_t gva = 0x1000'0000'0000;  // the Lua arena's address: all four levels are new
  REQUIRE(tables.map_page(vm.memory, vm.state.space.pages(), gva, 0x9000, PageAccess{true, true, false}).ok());
  auto t = tables.translate(vm.memory, gva + 0x123).value();
  REQUIRE(t.has_value());
  CHECK(t->gpa == 0x9123);
  CHECK(t->access == PageAccess{true, true, false});
  CHECK_FALSE(tables.translate(vm.memory, gva + kPageSize).value().has_value());
  CHECK_FALSE(tables.translate(vm.memory, 0x0000'8000'0000'0000).value().has_value());  // not canonical
}

TEST_CASE("the leaf entry carries present, writable, user and no-execute bits as asked") {
  CHECK(PageTables::leaf_entry(0x5000, {true, true, true}) == (0x5000 | pte::kPresent | pte::kWritable | pte::kUser | pte::kAccessed));
  CHECK(PageTables::leaf_entry(0x5000, {false, false, false}) == (0x5000 | pte::kPresent | pte::kAccessed | pte::kNoExecute));
}

TEST_CASE("protecting and unmapping a page changes what the walk sees") {
  TestVm vm;
  auto& tables = vm.state.space.tables();
  REQUIRE(tables.map_page(vm.memory, vm.state.space.pages(), 0x400000, 0xa000, {true, true, false}).ok());
  CHECK(tables.protect_page(vm.memory, 0x400000, {true, false, true}).value());
  CHECK(tables.translate(vm.memory, 0x400000).value()->access == PageAccess{true, false, true});
  CHECK_FALSE(tables.protect_page(vm.memory, 0x401000, {true, false, true}).value());
  CHECK(tables.unmap_page(vm.memory, 0x400000).value() == std::optional<std::uint64_t>(0xa000));
  CHECK_FALSE(tables.translate(vm.memory, 0x400000).value().has_value());
  CHECK_FALSE(tables.unmap_page(vm.memory, 0x400000).value().has_value());
}

TEST_CASE("a page that is not aligned or not canonical is not mapped") {
  TestVm vm;
  auto r = vm.state.space.tables().map_page(vm.memory, vm.state.space.pages(), 0x400010, 0xa000, {});
  REQUIRE_FALSE(r.ok());
  CHECK_ERROR(r, Cause::guest_memory, "cannot map 0x400010");
  CHECK_FALSE(vm.state.space.tables().map_page(vm.memory, vm.state.space.pages(), 0x0000'8000'0000'0000, 0xa000, {}).ok());
}

TEST_CASE("physical pages run out with the memory limit error") {
  auto memory = GuestMemory::create(64 * 1024).value();
  PhysicalPages pages(kFirstFreePage, 64 * 1024);
  CHECK(pages.free_pages() == 8);
  for (int i = 0; i < 8; ++i) REQUIRE(pages.allocate(memory).ok());
  auto none = pages.allocate(memory);
  REQUIRE_FALSE(none.ok());
  CHECK_ERROR(none, Cause::memory_full);
  CHECK(none.error().limit == 65536);
  pages.release(0x9000);
  REQUIRE(memory.write_u64(0x9000, 77).ok());
  CHECK(pages.allocate(memory).value() == 0x9000);
  CHECK(memory.read_u64(0x9000).value() == 0);  // a page given back comes back zeroed
}

TEST_CASE("a reserved region is backed only when touched, then keeps its bytes") {
  TestVm vm;
  auto& space = vm.state.space;
  REQUIRE(space.reserve(0x2000'0000, 4 * kPageSize, kProtRead | kProtWrite).ok());
  const auto before = space.pages().free_pages();
  CHECK_FALSE(space.tables().translate(vm.memory, 0x2000'0000).value().has_value());
  const std::uint64_t value = 0x1234;
  CHECK(space.copy_to_guest(vm.memory, 0x2000'1ffc, kvm_test::bytes_of(value)));  // straddles two pages
  CHECK(space.pages().free_pages() == before - 3);  // two data pages and a new page table
  std::uint64_t back = 0;
  CHECK(space.copy_from_guest(vm.memory, 0x2000'1ffc, std::as_writable_bytes(std::span(&back, 1))));
  CHECK(back == 0x1234);
  CHECK_FALSE(space.copy_to_guest(vm.memory, 0x2000'4000, kvm_test::bytes_of(value)));  // past the region
}

TEST_CASE("reserving over a taken, unaligned or kernel range is refused") {
  TestVm vm;
  auto& space = vm.state.space;
  REQUIRE(space.reserve(0x2000'0000, kPageSize, kProtRead).ok());
  auto taken = space.reserve(0x2000'0000, kPageSize, kProtRead);
  REQUIRE_FALSE(taken.ok());
  CHECK_ERROR(taken, Cause::guest_memory, "4096 bytes at 0x20000000");
  CHECK_FALSE(space.reserve(0x1000, kPageSize, kProtRead).ok());
  CHECK_FALSE(space.reserve(kUserEnd, kPageSize, kProtRead).ok());
}

TEST_CASE("free space is found top-down below a limit, around existing regions") {
  TestVm vm;
  auto& space = vm.state.space;
  REQUIRE(space.reserve(0x10'0000'0000 - kPageSize, kPageSize, kProtRead).ok());
  CHECK(space.find_free(kPageSize, 0x10'0000'0000).value() == 0x10'0000'0000 - 2 * kPageSize);
  CHECK(space.find_free(kPageSize, 0x20'0000'0000).value() == 0x20'0000'0000 - kPageSize);
  CHECK_FALSE(space.find_free(kUserEnd, kUserEnd).has_value());
}

TEST_CASE("a guest fault in a region is resolved by backing the page; others end the VM with what it did") {
  TestVm vm;
  auto& space = vm.state.space;
  REQUIRE(space.reserve(0x3000'0000, kPageSize, kProtRead).ok());
  CHECK(space.resolve_fault(vm.memory, 0x3000'0010, FaultCause::from_error_code(0x4)).ok());  // user read, missing
  CHECK(space.tables().translate(vm.memory, 0x3000'0010).value().has_value());

  auto write = space.resolve_fault(vm.memory, 0x3000'0010, FaultCause::from_error_code(0x7));
  REQUIRE_FALSE(write.ok());
  CHECK_ERROR(write, Cause::guest_fault, "wrote to memory at 0x30000010");

  auto unmapped = space.resolve_fault(vm.memory, 0x5000'0000, FaultCause::from_error_code(0x4));
  REQUIRE_FALSE(unmapped.ok());
  CHECK_ERROR(unmapped, Cause::guest_fault, "read unmapped memory at 0x50000000");

  auto fetch = space.resolve_fault(vm.memory, 0x3000'0000, FaultCause::from_error_code(0x15));
  REQUIRE_FALSE(fetch.ok());
  CHECK_ERROR(fetch, Cause::guest_fault, "executed memory at 0x30000000");
}

TEST_CASE("moving a region keeps its backed pages' contents at the new address") {
  TestVm vm;
  auto& space = vm.state.space;
  REQUIRE(space.reserve(0x4000'0000, 2 * kPageSize, kProtRead | kProtWrite).ok());
  const std::uint64_t value = 99;
  REQUIRE(space.copy_to_guest(vm.memory, 0x4000'1008, kvm_test::bytes_of(value)));
  REQUIRE(space.move(vm.memory, 0x4000'0000, 2 * kPageSize, 0x5000'0000).ok());
  CHECK(space.region_at(0x4000'0000) == nullptr);
  std::uint64_t back = 0;
  CHECK(space.copy_from_guest(vm.memory, 0x5000'1008, std::as_writable_bytes(std::span(&back, 1))));
  CHECK(back == 99);
}
