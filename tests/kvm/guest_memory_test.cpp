// Tests of the memfd-backed guest memory: bounds, copy-on-write forks, reset.
#include <doctest/doctest.h>

#include "tests/kvm/kvm_test_support.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn::sandbox::kvm;

namespace {
std::uint64_t at(const GuestMemory& m, std::uint64_t gpa) { return m.read_u64(gpa).value(); }
}  // namespace

TEST_CASE("a new guest memory is zeroed and has the size asked for") {
  auto memory = GuestMemory::create(1 << 20);
  REQUIRE(memory.ok());
  CHECK(memory->size() == (1 << 20));
  CHECK(at(*memory, 0) == 0);
  CHECK(at(*memory, (1 << 20) - 8) == 0);
  CHECK_FALSE(memory->is_fork());
}

TEST_CASE("a guest memory that is not a whole number of pages of at least 64 KiB is refused") {
  auto memory = GuestMemory::create(65536 + 100);
  REQUIRE_FALSE(memory.ok());
  CHECK_ERROR(memory, Cause::guest_memory, "size 65636", "65536 bytes");
  CHECK_FALSE(GuestMemory::create(4096).ok());
}

TEST_CASE("accesses past the end of guest memory, or wrapping around, are refused with their range") {
  auto memory = GuestMemory::create(1 << 20).value();
  auto past = memory.read_u64((1 << 20) - 4);
  REQUIRE_FALSE(past.ok());
  CHECK_ERROR(past, Cause::guest_memory, "8 bytes at 0xffffc", "0x100000 bytes");
  CHECK_FALSE(memory.span(8, ~std::uint64_t{0}).ok());
  CHECK_FALSE(memory.span(~std::uint64_t{0} - 2, 8).ok());
  CHECK(memory.span(0, 1 << 20).ok());
  CHECK(memory.span(1 << 20, 0).ok());
}

TEST_CASE("a fork starts with the master's bytes and its writes stay its own") {
  auto master = GuestMemory::create(1 << 20).value();
  REQUIRE(master.write_u64(0x1000, 0x1111).ok());
  auto one = master.fork_private().value();
  auto two = master.fork_private().value();
  CHECK(one.is_fork());
  CHECK(at(one, 0x1000) == 0x1111);
  REQUIRE(one.write_u64(0x1000, 0x2222).ok());
  CHECK(at(one, 0x1000) == 0x2222);
  CHECK(at(two, 0x1000) == 0x1111);
  CHECK(at(master, 0x1000) == 0x1111);
}

TEST_CASE("reset returns a fork to the master's bytes, and a master cannot be reset") {
  auto master = GuestMemory::create(1 << 20).value();
  REQUIRE(master.write_u64(0x2000, 7).ok());
  auto fork = master.fork_private().value();
  REQUIRE(fork.write_u64(0x2000, 8).ok());
  REQUIRE(fork.write_u64(0x3000, 9).ok());
  REQUIRE(fork.reset_to_pristine().ok());
  CHECK(at(fork, 0x2000) == 7);
  CHECK(at(fork, 0x3000) == 0);
  auto refused = master.reset_to_pristine();
  REQUIRE_FALSE(refused.ok());
  CHECK_ERROR(refused, Cause::guest_memory, "only a fork");
}

TEST_CASE("a moved guest memory keeps its bytes and the old object is empty") {
  auto memory = GuestMemory::create(1 << 20).value();
  REQUIRE(memory.write_u64(0x10, 42).ok());
  GuestMemory moved(std::move(memory));
  CHECK(at(moved, 0x10) == 42);
  CHECK(memory.size() == 0);  // NOLINT: checking the moved-from state on purpose
  CHECK_FALSE(memory.read_u64(0).ok());
}
