// Tests of the bounds on the guest's address space and on the monitor's work for it: range
// operations cost regions and backed pages (counted by AddressSpace::work), never a range's
// length; reserved bytes and regions are capped; mremap keeps each page's protection; the last
// page of the lower half is never mapped.
#include <doctest/doctest.h>

#include <sys/mman.h>
#include <sys/syscall.h>

#include <cerrno>

#include "sandbox/kvm/layout.hpp"
#include "tests/kvm/kvm_test_support.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn::sandbox::kvm;
using kvm_test::TestVm;

namespace {
constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
constexpr int kAnon = MAP_PRIVATE | MAP_ANONYMOUS;

struct Guest : TestVm {
  ChannelEnd channel;
  SyscallContext context{state, memory, channel, nullptr, nullptr};

  Guest() { state.brk_start = state.brk_current = 0x800000; }

  std::int64_t call(long number, std::uint64_t a0 = 0, std::uint64_t a1 = 0, std::uint64_t a2 = 0,
                    std::uint64_t a3 = 0, std::uint64_t a4 = 0, std::uint64_t a5 = 0) {
    SyscallArgs args{static_cast<std::uint64_t>(number), {a0, a1, a2, a3, a4, a5}};
    return dispatch_syscall(context, args);
  }
  std::int64_t mmap(std::uint64_t addr, std::uint64_t length, int prot, int flags = kAnon) {
    return call(SYS_mmap, addr, length, static_cast<std::uint64_t>(prot), static_cast<std::uint64_t>(flags), ~0ULL, 0);
  }
  bool put(std::uint64_t gva, std::uint64_t value) {
    return state.space.copy_to_guest(memory, gva, kvm_test::bytes_of(value));
  }
  std::uint64_t get(std::uint64_t gva) {
    std::uint64_t value = 0;
    REQUIRE(state.space.copy_from_guest(memory, gva, std::as_writable_bytes(std::span(&value, 1))));
    return value;
  }
  PageAccess access(std::uint64_t gva) {
    auto t = state.space.tables().translate(memory, gva);
    REQUIRE(t.ok());
    REQUIRE(t->has_value());
    return (*t)->access;
  }
};

// A big reservation with a few backed pages far apart (each needs its own page tables).
std::uint64_t big_mapping_with_three_pages(Guest& g, std::uint64_t length) {
  const std::int64_t at = g.mmap(0, length, PROT_READ | PROT_WRITE);
  REQUIRE(at > 0);
  const auto base = static_cast<std::uint64_t>(at);
  REQUIRE(g.put(base, 1));
  REQUIRE(g.put(base + length / 2, 2));
  REQUIRE(g.put(base + length - 8, 3));
  return base;
}

// Page-table entries a range operation may read here: three backed pages, each under at most
// three tables of 512 entries, the system pages' three tables, the PML4, and the regions
// (16 tables in all is ample). The per-page walk read 4.7 million for 8 GiB (9.4 million to move it).
constexpr std::uint64_t kWorkForThreePages = 16 * 512;
}  // namespace

TEST_CASE("munmap of the whole user half costs the backed pages, not the 8 GiB reserved in it") {
  Guest g;
  const std::uint64_t base = big_mapping_with_three_pages(g, 8 * kGiB);
  const std::uint64_t free_before = g.state.space.pages().free_pages();
  const std::uint64_t before = g.state.space.work();
  CHECK(g.call(SYS_munmap, kUserLowest, kUserEnd - kUserLowest) == 0);
  CHECK(g.state.space.work() - before < kWorkForThreePages);
  CHECK(g.state.space.region_at(base) == nullptr);
  CHECK(g.state.space.reserved_bytes() == 0);
  CHECK(g.state.tlb_flush_needed);
  // The three data pages went back to the pool (the page tables stay: page_tables.hpp).
  CHECK(g.state.space.pages().free_pages() == free_before + 3);
  // A second munmap of the half meets only those emptied tables.
  const std::uint64_t again = g.state.space.work();
  CHECK(g.call(SYS_munmap, kUserLowest, kUserEnd - kUserLowest) == 0);
  CHECK(g.state.space.work() - again < kWorkForThreePages);
  CHECK_FALSE(g.state.space.tables().translate(g.memory, base + 4 * kGiB).value().has_value());
}

TEST_CASE("mprotect of 8 GiB re-protects its backed pages at the cost of those pages") {
  Guest g;
  const std::uint64_t base = big_mapping_with_three_pages(g, 8 * kGiB);
  const std::uint64_t before = g.state.space.work();
  CHECK(g.call(SYS_mprotect, base, 8 * kGiB, PROT_READ) == 0);
  CHECK(g.state.space.work() - before < kWorkForThreePages);
  CHECK(g.access(base + 4 * kGiB) == PageAccess{true, false, false});
  CHECK(g.access(base + 8 * kGiB - 8) == PageAccess{true, false, false});
  CHECK_FALSE(g.put(base, 1));
  CHECK(g.get(base + 4 * kGiB) == 2);
}

TEST_CASE("mremap moves 8 GiB at the cost of its backed pages, contents kept") {
  Guest g;
  const std::uint64_t base = big_mapping_with_three_pages(g, 8 * kGiB);
  REQUIRE(g.mmap(base + 8 * kGiB, kPageSize, PROT_READ, kAnon | MAP_FIXED_NOREPLACE) ==
          static_cast<std::int64_t>(base + 8 * kGiB));  // no growing in place
  const std::uint64_t before = g.state.space.work();
  const std::int64_t moved = g.call(SYS_mremap, base, 8 * kGiB, 8 * kGiB + kPageSize, MREMAP_MAYMOVE);
  REQUIRE(moved > 0);
  CHECK(g.state.space.work() - before < kWorkForThreePages);
  const auto to = static_cast<std::uint64_t>(moved);
  CHECK(g.get(to) == 1);
  CHECK(g.get(to + 4 * kGiB) == 2);
  CHECK(g.get(to + 8 * kGiB - 8) == 3);
  CHECK(g.put(to + 8 * kGiB, 4));  // the grown page
  CHECK(g.state.space.region_at(base) == nullptr);
}

TEST_CASE("reserved address space is bounded by guest memory: a terabyte is refused with ENOMEM") {
  Guest g;
  const std::uint64_t limit = g.state.space.reserve_limit();
  CHECK(limit == reserve_limit_for(kvm_test::kTestMemoryBytes));
  CHECK(g.mmap(0, std::uint64_t{1} << 40, PROT_READ | PROT_WRITE) == -ENOMEM);
  CHECK(g.mmap(0, 127 * (std::uint64_t{1} << 40), PROT_READ) == -ENOMEM);
  const std::int64_t most = g.mmap(0, limit - kPageSize, PROT_READ);
  REQUIRE(most > 0);
  CHECK(g.mmap(0, 2 * kPageSize, PROT_READ) == -ENOMEM);
  CHECK(g.call(SYS_brk, g.state.brk_current + 2 * kPageSize) == static_cast<std::int64_t>(g.state.brk_current));
  CHECK(g.mmap(0, kPageSize, PROT_READ) > 0);  // the last page fits
  CHECK(g.state.space.reserved_bytes() == limit);
  auto refused = g.state.space.reserve(0x5000'0000, kPageSize, kProtRead);
  REQUIRE_FALSE(refused.ok());
  CHECK_ERROR(refused, Cause::guest_memory, "4096 bytes at 0x50000000", "limited to " + std::to_string(limit));
  CHECK(g.call(SYS_munmap, static_cast<std::uint64_t>(most), kGiB) == 0);
  // A growth past the bound is refused before anything moves: the range stays where it was.
  const std::int64_t small = g.mmap(0x6000'0000, kPageSize, PROT_READ | PROT_WRITE, kAnon | MAP_FIXED_NOREPLACE);
  REQUIRE(small == 0x6000'0000);
  REQUIRE(g.put(0x6000'0000, 42));
  REQUIRE(g.mmap(0x6000'1000, kPageSize, PROT_READ, kAnon | MAP_FIXED_NOREPLACE) == 0x6000'1000);
  CHECK(g.call(SYS_mremap, 0x6000'0000, kPageSize, 2 * kGiB, MREMAP_MAYMOVE) == -ENOMEM);
  CHECK(g.get(0x6000'0000) == 42);
  CHECK(g.mmap(0, kGiB - 2 * kPageSize, PROT_READ) > 0);  // given back, usable again
}

TEST_CASE("regions are bounded: past kMaxRegions mmap and a splitting munmap get ENOMEM, nothing dropped") {
  Guest g;
  const std::size_t before = g.state.space.region_count();
  // Adjacent mappings with one protection are one region, as brk's page-by-page growth is.
  for (int i = 0; i < 100; ++i) REQUIRE(g.mmap(0, kPageSize, PROT_READ | PROT_WRITE) > 0);
  for (int i = 1; i <= 100; ++i) REQUIRE(g.call(SYS_brk, g.state.brk_start + i * kPageSize) > 0);
  CHECK(g.state.space.region_count() <= before + 2);
  // Alternating protections cannot merge: the count stops at the bound.
  std::size_t calls = 0;
  std::int64_t last = 0;
  int last_mapped_prot = 0;
  while (calls < kMaxRegions + 10) {
    ++calls;
    const int prot = calls % 2 == 0 ? PROT_READ : PROT_READ | PROT_WRITE;
    last = g.mmap(0, kPageSize, prot);
    if (last < 0) break;
    last_mapped_prot = prot;
  }
  CHECK(last == -ENOMEM);
  CHECK(calls <= kMaxRegions);
  CHECK(g.state.space.region_count() == kMaxRegions);
  // A hole in a region would need one more region: refused, and the pages stay.
  const std::int64_t wide = g.mmap(0, 3 * kPageSize, last_mapped_prot);  // merges with the last one, just above
  REQUIRE(wide > 0);
  const auto at = static_cast<std::uint64_t>(wide);
  CHECK(g.call(SYS_munmap, at + kPageSize, kPageSize) == -ENOMEM);
  CHECK(g.state.space.region_at(at + kPageSize) != nullptr);
  CHECK(g.call(SYS_mprotect, at + kPageSize, kPageSize, PROT_NONE) == -ENOMEM);
  CHECK(g.state.space.region_count() == kMaxRegions);
  CHECK(g.call(SYS_munmap, at, 4 * kPageSize) == 0);  // a whole region (with its neighbour) needs no split
  CHECK(g.state.space.region_count() == kMaxRegions - 1);
}

TEST_CASE("mremap keeps each page's protection: written data moved beside code never becomes executable") {
  for (const bool jit : {false, true}) {
    CAPTURE(jit);
    Guest g;
    g.state.jit_allowed = jit;
    // Code (as the ELF loader makes it) followed by written data, as one mremap range.
    const std::uint64_t code = 0x3000'0000, data = code + kPageSize;
    REQUIRE(g.state.space.reserve(code, kPageSize, kProtRead | kProtExec).ok());
    REQUIRE(g.state.space.reserve(data, kPageSize, kProtRead | kProtWrite).ok());
    REQUIRE(g.put(data, 0xc3c3c3c3c3c3c3c3));  // `ret`s the guest would like to run
    REQUIRE(g.mmap(data + kPageSize, kPageSize, PROT_READ, kAnon | MAP_FIXED_NOREPLACE) > 0);

    const std::int64_t moved = g.call(SYS_mremap, code, 2 * kPageSize, 4 * kPageSize, MREMAP_MAYMOVE);
    REQUIRE(moved > 0);
    const auto to = static_cast<std::uint64_t>(moved);
    CHECK(g.state.space.region_at(to)->prot == (kProtRead | kProtExec));
    CHECK(g.state.space.region_at(to + kPageSize)->prot == (kProtRead | kProtWrite));
    CHECK(g.access(to + kPageSize) == PageAccess{true, true, false});
    CHECK(g.get(to + kPageSize) == 0xc3c3c3c3c3c3c3c3);
    auto fetch = g.state.space.resolve_fault(g.memory, to + kPageSize, FaultCause::from_error_code(0x15));
    CHECK_FALSE(fetch.ok());
    // The grown pages extend the last page's region (data), not the first one's (code).
    CHECK(g.state.space.region_at(to + 3 * kPageSize)->prot == (kProtRead | kProtWrite));

    // Growing in place likewise: the new page is data, and the data page stays data.
    const std::uint64_t code2 = 0x4000'0000;
    REQUIRE(g.state.space.reserve(code2, kPageSize, kProtRead | kProtExec).ok());
    REQUIRE(g.state.space.reserve(code2 + kPageSize, kPageSize, kProtRead | kProtWrite).ok());
    CHECK(g.call(SYS_mremap, code2, 2 * kPageSize, 3 * kPageSize, 0) == static_cast<std::int64_t>(code2));
    CHECK(g.state.space.region_at(code2 + 2 * kPageSize)->prot == (kProtRead | kProtWrite));
    CHECK(g.state.space.region_at(code2)->prot == (kProtRead | kProtExec));
  }
}

TEST_CASE("the last page below the end of the lower half is never mapped, so RCX is canonical at sysretq") {
  Guest g;
  g.state.jit_allowed = true;
  const std::uint64_t last_page = kUserEnd - kPageSize;
  CHECK(kUserMapEnd == last_page);
  CHECK(g.mmap(last_page, kPageSize, PROT_READ | PROT_EXEC, kAnon | MAP_FIXED) == -EINVAL);
  CHECK(g.mmap(last_page, kPageSize, PROT_READ, kAnon | MAP_FIXED_NOREPLACE) == -EINVAL);
  CHECK(g.mmap(last_page - kPageSize, 2 * kPageSize, PROT_READ | PROT_EXEC, kAnon | MAP_FIXED) == -EINVAL);
  const std::int64_t hinted = g.mmap(last_page, kPageSize, PROT_READ | PROT_EXEC);
  REQUIRE(hinted > 0);
  CHECK(static_cast<std::uint64_t>(hinted) + kPageSize <= last_page);  // the hint is not honoured there
  CHECK_FALSE(g.state.space.reserve(last_page, kPageSize, kProtRead | kProtExec).ok());
  CHECK_FALSE(g.state.space.is_free(last_page, kPageSize));
  CHECK(g.state.space.find_free(kPageSize, kUserEnd).value() == last_page - kPageSize);
  // The page below it may hold code: a `syscall` there returns to last_page, which is canonical.
  CHECK(g.mmap(last_page - kPageSize, kPageSize, PROT_READ | PROT_EXEC, kAnon | MAP_FIXED) ==
        static_cast<std::int64_t>(last_page - kPageSize));
  CHECK(is_canonical(last_page));
  CHECK(g.call(SYS_mremap, last_page - kPageSize, kPageSize, 2 * kPageSize, 0) == -ENOMEM);
}
