// Tests of the syscall table: each handler over a small GuestState and GuestMemory.
#include <doctest/doctest.h>

#include <asm/prctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include <cerrno>
#include <string>

#include "sandbox/kvm/layout.hpp"
#include "tests/kvm/kvm_test_support.hpp"

using namespace sojourn::sandbox::kvm;
using kvm_test::TestVm;

namespace {
constexpr std::uint64_t kArena = 0x1000'0000'0000;  // the guest's Lua arena (sandbox/guest/arena.hpp)

struct Guest : TestVm {
  ChannelEnd channel;
  std::string from_host = "request";
  std::string to_host;
  SyscallContext context{state, memory, channel, nullptr, nullptr};

  Guest() {
    channel.read = [this](std::span<std::byte> out) -> std::int64_t {
      const std::size_t n = std::min(out.size(), from_host.size());
      std::memcpy(out.data(), from_host.data(), n);
      from_host.erase(0, n);
      return static_cast<std::int64_t>(n);
    };
    channel.write = [this](std::span<const std::byte> in) -> std::int64_t {
      to_host.append(reinterpret_cast<const char*>(in.data()), in.size());  // SAFETY: test bytes as chars
      return static_cast<std::int64_t>(in.size());
    };
    context.random = [](std::span<std::byte> out) {
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::byte>(i + 1);
    };
    context.clock = [](int, std::uint64_t& s, std::uint64_t& ns) -> std::int64_t { s = 12; ns = 34; return 0; };
    state.brk_start = state.brk_current = 0x800000;
  }

  std::int64_t call(long number, std::uint64_t a0 = 0, std::uint64_t a1 = 0, std::uint64_t a2 = 0,
                    std::uint64_t a3 = 0, std::uint64_t a4 = 0, std::uint64_t a5 = 0) {
    SyscallArgs args{static_cast<std::uint64_t>(number), {a0, a1, a2, a3, a4, a5}};
    return dispatch_syscall(context, args);
  }
  std::uint64_t map(std::uint64_t length, int prot = PROT_READ | PROT_WRITE) {
    const std::int64_t at = call(SYS_mmap, 0, length, prot, MAP_PRIVATE | MAP_ANONYMOUS, ~0ULL, 0);
    REQUIRE(at > 0);
    return static_cast<std::uint64_t>(at);
  }
  bool put(std::uint64_t gva, std::uint64_t value) {
    return state.space.copy_to_guest(memory, gva, kvm_test::bytes_of(value));
  }
  std::uint64_t get(std::uint64_t gva) {
    std::uint64_t value = 0;
    REQUIRE(state.space.copy_from_guest(memory, gva, std::as_writable_bytes(std::span(&value, 1))));
    return value;
  }
};
}  // namespace

TEST_CASE("a syscall without a row returns ENOSYS, whatever its number") {
  Guest g;
  CHECK(g.call(SYS_openat) == -ENOSYS);
  CHECK(g.call(SYS_fork) == -ENOSYS);
  CHECK(g.call(SYS_rseq) == -ENOSYS);
  CHECK(g.call(100000) == -ENOSYS);
  CHECK(g.call(-1) == -ENOSYS);
  CHECK(syscall_name(SYS_mmap) == "mmap");
  CHECK(syscall_name(SYS_openat).empty());
}

TEST_CASE("readlink finds no file, set_tid_address names tid 1, set_robust_list wants its size") {
  Guest g;
  CHECK(g.call(SYS_readlink, 0, 0, 0) == -ENOENT);
  CHECK(g.call(SYS_set_tid_address, 0x7000) == 1);
  CHECK(g.state.clear_child_tid == 0x7000);
  CHECK(g.call(SYS_set_robust_list, 0x7100, 24) == 0);
  CHECK(g.call(SYS_set_robust_list, 0x7100, 16) == -EINVAL);
}

TEST_CASE("anonymous mmap without a hint lands page-aligned below the mmap top and is backed on touch") {
  Guest g;
  const std::uint64_t at = g.map(10000);
  CHECK(at % kPageSize == 0);
  CHECK(at + 3 * kPageSize <= kMmapTop);
  CHECK(g.state.space.region_at(at)->end == at + 3 * kPageSize);
  CHECK(g.put(at + 8, 5));
  CHECK(g.get(at + 8) == 5);
  CHECK(g.map(kPageSize) < at);
}

TEST_CASE("MAP_FIXED_NOREPLACE puts the arena at its fixed address, once") {
  Guest g;
  const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE;
  CHECK(g.call(SYS_mmap, kArena, 1ULL << 30, PROT_READ | PROT_WRITE, flags, ~0ULL, 0) == static_cast<std::int64_t>(kArena));
  CHECK(g.call(SYS_mmap, kArena, kPageSize, PROT_READ | PROT_WRITE, flags, ~0ULL, 0) == -EEXIST);
  CHECK(g.put(kArena + (1ULL << 29), 1));
}

TEST_CASE("MAP_FIXED replaces what was there; a free hint is honoured, a taken one is not") {
  Guest g;
  const std::uint64_t at = g.map(2 * kPageSize);
  REQUIRE(g.put(at, 77));
  const int fixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
  CHECK(g.call(SYS_mmap, at, kPageSize, PROT_READ | PROT_WRITE, fixed, ~0ULL, 0) == static_cast<std::int64_t>(at));
  CHECK(g.get(at) == 0);
  CHECK(g.state.tlb_flush_needed);
  CHECK(g.call(SYS_mmap, 0x5000'0000, kPageSize, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, ~0ULL, 0) == 0x5000'0000);
  const std::int64_t moved = g.call(SYS_mmap, 0x5000'0000, kPageSize, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, ~0ULL, 0);
  CHECK(moved > 0);
  CHECK(moved != 0x5000'0000);
  CHECK(g.call(SYS_mmap, 0x1000, kPageSize, PROT_READ, fixed, ~0ULL, 0) == -EINVAL);   // the system pages
  CHECK(g.call(SYS_mmap, 0x5000'0010, kPageSize, PROT_READ, fixed, ~0ULL, 0) == -EINVAL);
}

TEST_CASE("mmap refuses files, zero lengths and executable memory unless the JIT is allowed, W^X even then") {
  Guest g;
  CHECK(g.call(SYS_mmap, 0, kPageSize, PROT_READ, MAP_PRIVATE, 3, 0) == -ENODEV);
  CHECK(g.call(SYS_mmap, 0, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, ~0ULL, 0) == -EINVAL);
  CHECK(g.call(SYS_mmap, 0, kPageSize, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, ~0ULL, 0) == -EACCES);
  g.state.jit_allowed = true;
  const std::int64_t code = g.call(SYS_mmap, 0, kPageSize, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, ~0ULL, 0);
  CHECK(code > 0);
  CHECK(g.call(SYS_mmap, 0, kPageSize, PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, ~0ULL, 0) == -EACCES);
  CHECK(g.call(SYS_mprotect, static_cast<std::uint64_t>(code), kPageSize, PROT_READ | PROT_WRITE | PROT_EXEC) == -EACCES);
}

TEST_CASE("munmap drops the pages and asks for a TLB flush; mprotect narrows and needs full coverage") {
  Guest g;
  const std::uint64_t at = g.map(3 * kPageSize);
  REQUIRE(g.put(at + kPageSize, 1));
  CHECK(g.call(SYS_munmap, at + kPageSize, kPageSize) == 0);
  CHECK(g.state.tlb_flush_needed);
  CHECK_FALSE(g.put(at + kPageSize, 1));
  CHECK(g.put(at + 2 * kPageSize, 1));
  CHECK(g.call(SYS_munmap, at + 1, kPageSize) == -EINVAL);
  CHECK(g.call(SYS_mprotect, at, 3 * kPageSize, PROT_READ) == -ENOMEM);  // a hole in the middle
  CHECK(g.call(SYS_mprotect, at + 2 * kPageSize, kPageSize, PROT_READ) == 0);
  CHECK_FALSE(g.put(at + 2 * kPageSize, 1));
  CHECK(g.state.space.tables().translate(g.memory, at + 2 * kPageSize).value()->access == PageAccess{true, false, false});
}

TEST_CASE("mremap shrinks, grows in place, and moves with MREMAP_MAYMOVE keeping the contents") {
  Guest g;
  const std::uint64_t at = g.map(2 * kPageSize);
  REQUIRE(g.put(at + 16, 1234));
  CHECK(g.call(SYS_mremap, at, 2 * kPageSize, kPageSize, 0) == static_cast<std::int64_t>(at));
  CHECK(g.state.space.region_at(at + kPageSize) == nullptr);
  CHECK(g.call(SYS_mremap, at, kPageSize, 2 * kPageSize, 0) == static_cast<std::int64_t>(at));
  const std::uint64_t blocker = at + 2 * kPageSize;
  CHECK(g.call(SYS_mmap, blocker, kPageSize, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, ~0ULL, 0) ==
        static_cast<std::int64_t>(blocker));
  CHECK(g.call(SYS_mremap, at, 2 * kPageSize, 4 * kPageSize, 0) == -ENOMEM);
  const std::int64_t moved = g.call(SYS_mremap, at, 2 * kPageSize, 4 * kPageSize, MREMAP_MAYMOVE);
  REQUIRE(moved > 0);
  CHECK(static_cast<std::uint64_t>(moved) != at);
  CHECK(g.get(static_cast<std::uint64_t>(moved) + 16) == 1234);
  CHECK(g.put(static_cast<std::uint64_t>(moved) + 3 * kPageSize, 1));
  CHECK(g.state.space.region_at(at) == nullptr);
  CHECK(g.call(SYS_mremap, 0x6000'0000, kPageSize, 2 * kPageSize, MREMAP_MAYMOVE) == -EFAULT);
  CHECK(g.call(SYS_mremap, static_cast<std::uint64_t>(moved), kPageSize, 2 * kPageSize, 2 /* MREMAP_FIXED */) == -EINVAL);
}

TEST_CASE("brk reports the break, grows into usable memory, shrinks, and refuses to pass its limit") {
  Guest g;
  CHECK(g.call(SYS_brk, 0) == 0x800000);
  CHECK(g.call(SYS_brk, 0x800000 + 5000) == 0x800000 + 5000);
  CHECK(g.put(0x800000 + 4992, 9));
  CHECK(g.call(SYS_brk, 0x800000 + 100) == 0x800000 + 100);
  CHECK_FALSE(g.put(0x801000, 9));
  CHECK(g.put(0x800000, 9));
  CHECK(g.call(SYS_brk, 0x800000 + kBrkMaxBytes + kPageSize) == 0x800000 + 100);
  CHECK(g.call(SYS_brk, 0x100000) == 0x800000 + 100);
}

TEST_CASE("arch_prctl sets and reads the FS base for the run loop to load") {
  Guest g;
  CHECK(g.call(SYS_arch_prctl, ARCH_SET_FS, 0x6fc000) == 0);
  CHECK(g.state.fs_base == 0x6fc000);
  CHECK(g.state.segment_bases_dirty);
  const std::uint64_t out = g.map(kPageSize);
  CHECK(g.call(SYS_arch_prctl, ARCH_GET_FS, out) == 0);
  CHECK(g.get(out) == 0x6fc000);
  CHECK(g.call(SYS_arch_prctl, ARCH_SET_FS, 0xffff'8000'0000'0000) == -EPERM);
  CHECK(g.call(SYS_arch_prctl, ARCH_GET_FS, 0x10) == -EFAULT);
  CHECK(g.call(SYS_arch_prctl, 0x3001, 0) == -EINVAL);
}

TEST_CASE("prlimit64 reports the guest's limits and lets it change none") {
  Guest g;
  const std::uint64_t out = g.map(kPageSize);
  CHECK(g.call(SYS_prlimit64, 0, RLIMIT_STACK, 0, out) == 0);
  CHECK(g.get(out) == kStackBytes);
  CHECK(g.call(SYS_prlimit64, 0, RLIMIT_NOFILE, 0, out) == 0);
  CHECK(g.get(out + 8) == 4);
  CHECK(g.call(SYS_prlimit64, 0, RLIMIT_STACK, out, 0) == -EPERM);
  CHECK(g.call(SYS_prlimit64, 77, RLIMIT_STACK, 0, out) == -ESRCH);
}

TEST_CASE("getrandom and clock_gettime write host values into guest memory") {
  Guest g;
  const std::uint64_t out = g.map(kPageSize);
  CHECK(g.call(SYS_getrandom, out, 8, 0) == 8);
  CHECK(g.get(out) == 0x0807060504030201);
  CHECK(g.call(SYS_getrandom, out, 100000, 0) == 256);
  CHECK(g.call(SYS_getrandom, 0x10, 8, 0) == -EFAULT);
  CHECK(g.call(SYS_getrandom, out, 8, 0x100) == -EINVAL);
  CHECK(g.call(SYS_clock_gettime, 1, out) == 0);
  CHECK(g.get(out) == 12);
  CHECK(g.get(out + 8) == 34);
  std::uint64_t s = 0, ns = 0;
  CHECK(host_clock(CLOCK_MONOTONIC, s, ns) == 0);
  CHECK(host_clock(CLOCK_PROCESS_CPUTIME_ID, s, ns) == -EINVAL);
}

TEST_CASE("read and write reach the host only on the channel descriptor") {
  Guest g;
  const std::uint64_t buf = g.map(kPageSize);
  CHECK(g.call(SYS_read, kChannelFd, buf, 100) == 7);
  std::string got(7, '\0');
  REQUIRE(g.state.space.copy_from_guest(g.memory, buf, std::as_writable_bytes(std::span(got))));
  CHECK(got == "request");
  CHECK(g.call(SYS_write, kChannelFd, buf, 3) == 3);
  CHECK(g.to_host == "req");
  CHECK(g.call(SYS_write, 1, buf, 3) == -EBADF);
  CHECK(g.call(SYS_read, 0, buf, 3) == -EBADF);
}

TEST_CASE("a read into memory the guest cannot write fails with EFAULT before taking bytes from the channel") {
  Guest g;
  const std::uint64_t ro = g.map(kPageSize, PROT_READ);
  CHECK(g.call(SYS_read, kChannelFd, ro, 4) == -EFAULT);
  CHECK(g.call(SYS_read, kChannelFd, 0x10, 4) == -EFAULT);
  CHECK(g.from_host == "request");
  CHECK(g.call(SYS_write, kChannelFd, 0x10, 4) == -EFAULT);
  CHECK(g.to_host.empty());
}

TEST_CASE("exit_group records the low byte of the status") {
  Guest g;
  CHECK(g.call(SYS_exit_group, 0x12a) == 0);
  CHECK(g.state.exit_status == std::optional<int>(0x2a));
}

TEST_CASE("futex wakes no one and never blocks the only thread") {
  Guest g;
  const std::uint64_t word = g.map(kPageSize);
  REQUIRE(g.put(word, 5));
  CHECK(g.call(SYS_futex, word, 0x81 /* FUTEX_WAKE_PRIVATE */, 1) == 0);
  CHECK(g.call(SYS_futex, word, 0x80 /* FUTEX_WAIT_PRIVATE */, 4) == -EAGAIN);
  CHECK(g.call(SYS_futex, word, 0x80, 5) == -EINTR);
  CHECK(g.call(SYS_futex, 0x10, 0x80, 5) == -EFAULT);
  CHECK(g.call(SYS_futex, word, 3 /* FUTEX_REQUEUE */, 5) == -ENOSYS);
}
