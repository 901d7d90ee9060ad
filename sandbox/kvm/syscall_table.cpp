// The syscall handlers and their table. Each row names who in the guest needs the syscall
// (measured in docs/jails.md: a static glibc binary's start-up, then the guest runtime).
#include "sandbox/kvm/syscall_table.hpp"

#include <asm/prctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <ctime>
#include <vector>

#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
using Handler = std::int64_t (*)(SyscallContext&, const SyscallArgs&);

constexpr std::uint64_t page_up(std::uint64_t a) { return (a + kPageSize - 1) & ~(kPageSize - 1); }

// PROT_* a guest may ask for: exec only with the JIT, and never writable and executable at once.
std::optional<std::int64_t> refuse_prot(const GuestState& state, std::uint64_t prot) {
  if ((prot & ~std::uint64_t{PROT_READ | PROT_WRITE | PROT_EXEC}) != 0) return -EINVAL;
  if ((prot & PROT_EXEC) != 0 && (!state.jit_allowed || (prot & PROT_WRITE) != 0)) return -EACCES;
  return std::nullopt;
}

std::int64_t sys_read(SyscallContext& c, const SyscallArgs& a) {
  if (a.arg[0] != kChannelFd || !c.channel.read) return -EBADF;
  const std::uint64_t count = std::min(a.arg[2], kMaxTransferBytes);
  std::vector<std::byte> buffer(count);
  // Check the destination before reading: bytes taken from the channel must not be lost.
  if (!c.state.space.range_allows(a.arg[1], count, kProtWrite)) return -EFAULT;
  const std::int64_t got = c.channel.read(std::span(buffer));
  if (got <= 0) return got;
  if (!c.state.space.copy_to_guest(c.memory, a.arg[1], std::span(buffer).first(got))) return -EFAULT;
  return got;
}

std::int64_t sys_write(SyscallContext& c, const SyscallArgs& a) {
  if (a.arg[0] != kChannelFd || !c.channel.write) return -EBADF;
  std::vector<std::byte> buffer(std::min(a.arg[2], kMaxTransferBytes));
  if (!c.state.space.copy_from_guest(c.memory, a.arg[1], std::span(buffer))) return -EFAULT;
  return c.channel.write(std::span<const std::byte>(buffer));
}

std::int64_t sys_mmap(SyscallContext& c, const SyscallArgs& a) {
  const std::uint64_t addr = a.arg[0], prot = a.arg[2], flags = a.arg[3];
  if (a.arg[1] == 0 || a.arg[1] > kUserEnd) return -EINVAL;
  const std::uint64_t length = page_up(a.arg[1]);
  if (auto refused = refuse_prot(c.state, prot)) return *refused;
  if ((flags & MAP_ANONYMOUS) == 0) return -ENODEV;  // the guest has no files
  if ((flags & (MAP_PRIVATE | MAP_SHARED)) == 0) return -EINVAL;
  auto& space = c.state.space;
  std::uint64_t at = 0;
  if ((flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) != 0) {
    if (addr % kPageSize != 0 || addr < kUserLowest || addr >= kUserMapEnd || length > kUserMapEnd - addr) {
      return -EINVAL;  // kUserMapEnd: the last page of the half stays unmapped (layout.hpp)
    }
    if (!space.is_free(addr, length)) {
      if ((flags & MAP_FIXED_NOREPLACE) != 0) return -EEXIST;
      if (!space.release(c.memory, addr, length)) return -ENOMEM;
      c.state.tlb_flush_needed = true;
    }
    at = addr;
  } else if (addr != 0 && addr % kPageSize == 0 && space.is_free(addr, length)) {
    at = addr;  // a hint that fits is honoured
  } else if (auto found = space.find_free(length, kMmapTop)) {
    at = *found;
  } else {
    return -ENOMEM;
  }
  if (!space.reserve(at, length, static_cast<int>(prot))) return -ENOMEM;
  return static_cast<std::int64_t>(at);
}

std::int64_t sys_munmap(SyscallContext& c, const SyscallArgs& a) {
  if (a.arg[0] % kPageSize != 0 || a.arg[1] == 0 || a.arg[0] < kUserLowest || a.arg[0] >= kUserEnd ||
      a.arg[1] > kUserEnd - a.arg[0]) {
    return -EINVAL;
  }
  if (!c.state.space.release(c.memory, a.arg[0], page_up(a.arg[1]))) return -ENOMEM;
  c.state.tlb_flush_needed = true;
  return 0;
}

std::int64_t sys_mprotect(SyscallContext& c, const SyscallArgs& a) {
  if (a.arg[0] % kPageSize != 0 || a.arg[0] < kUserLowest || a.arg[0] >= kUserEnd) return -EINVAL;
  if (auto refused = refuse_prot(c.state, a.arg[2])) return *refused;
  if (a.arg[1] == 0) return 0;
  const std::uint64_t length = page_up(a.arg[1]);
  if (length > kUserEnd - a.arg[0]) return -ENOMEM;
  auto changed = c.state.space.protect(c.memory, a.arg[0], length, static_cast<int>(a.arg[2]));
  if (!changed || !*changed) return -ENOMEM;
  c.state.tlb_flush_needed = true;
  return 0;
}

std::int64_t sys_mremap(SyscallContext& c, const SyscallArgs& a) {
  const std::uint64_t old_addr = a.arg[0], flags = a.arg[3];
  const std::uint64_t old_len = page_up(a.arg[1]), new_len = page_up(a.arg[2]);
  if (old_addr % kPageSize != 0 || new_len == 0 || old_len == 0 || (flags & ~std::uint64_t{MREMAP_MAYMOVE}) != 0) {
    return -EINVAL;  // MREMAP_FIXED and MREMAP_DONTUNMAP are not emulated
  }
  auto& space = c.state.space;
  if (!space.range_allows(old_addr, old_len, 0)) return -EFAULT;  // not wholly mapped
  // A moved range keeps each page's protection (AddressSpace::move); new pages past the old
  // end take the last old page's, as they extend its region. Never one protection for all:
  // a move would then make written data executable.
  const int prot = space.region_at(old_addr + old_len - 1)->prot;
  if (new_len <= old_len) {
    if (new_len < old_len) {
      if (!space.release(c.memory, old_addr + new_len, old_len - new_len)) return -ENOMEM;
      c.state.tlb_flush_needed = true;
    }
    return static_cast<std::int64_t>(old_addr);
  }
  // The growth must fit the reserve bound before anything moves: a refusal after the move
  // would leave the guest's range at an address it was never told.
  if (new_len - old_len > space.reserve_limit() - space.reserved_bytes()) return -ENOMEM;
  if (space.is_free(old_addr + old_len, new_len - old_len)) {
    if (!space.reserve(old_addr + old_len, new_len - old_len, prot)) return -ENOMEM;
    return static_cast<std::int64_t>(old_addr);
  }
  if ((flags & MREMAP_MAYMOVE) == 0) return -ENOMEM;
  auto to = space.find_free(new_len, kMmapTop);
  if (!to) return -ENOMEM;
  if (!space.move(c.memory, old_addr, old_len, *to)) return -ENOMEM;
  if (!space.reserve(*to + old_len, new_len - old_len, prot)) return -ENOMEM;
  c.state.tlb_flush_needed = true;
  return static_cast<std::int64_t>(*to);
}

std::int64_t sys_brk(SyscallContext& c, const SyscallArgs& a) {
  auto& s = c.state;
  const std::uint64_t want = a.arg[0];
  if (want < s.brk_start || want - s.brk_start > kBrkMaxBytes) return static_cast<std::int64_t>(s.brk_current);
  const std::uint64_t old_end = page_up(s.brk_current), new_end = page_up(want);
  if (new_end > old_end) {
    if (!s.space.reserve(old_end, new_end - old_end, kProtRead | kProtWrite)) {
      return static_cast<std::int64_t>(s.brk_current);  // something else is mapped there
    }
  } else if (new_end < old_end) {
    if (!s.space.release(c.memory, new_end, old_end - new_end)) return static_cast<std::int64_t>(s.brk_current);
    s.tlb_flush_needed = true;
  }
  s.brk_current = want;
  return static_cast<std::int64_t>(want);
}

std::int64_t sys_arch_prctl(SyscallContext& c, const SyscallArgs& a) {
  switch (a.arg[0]) {
    case ARCH_SET_FS:
    case ARCH_SET_GS:
      if (!is_canonical(a.arg[1]) || a.arg[1] >= kUserEnd) return -EPERM;
      (a.arg[0] == ARCH_SET_FS ? c.state.fs_base : c.state.gs_base) = a.arg[1];
      c.state.segment_bases_dirty = true;
      return 0;
    case ARCH_GET_FS:
    case ARCH_GET_GS: {
      const std::uint64_t value = a.arg[0] == ARCH_GET_FS ? c.state.fs_base : c.state.gs_base;
      return c.state.space.copy_to_guest(c.memory, a.arg[1], std::as_bytes(std::span(&value, 1))) ? 0 : -EFAULT;
    }
    default: return -EINVAL;  // ARCH_CET_STATUS and friends: glibc takes "no"
  }
}

std::int64_t sys_set_tid_address(SyscallContext& c, const SyscallArgs& a) {
  c.state.clear_child_tid = a.arg[0];
  return 1;  // the guest is its own only thread: tid 1
}

std::int64_t sys_set_robust_list(SyscallContext& c, const SyscallArgs& a) {
  if (a.arg[1] != 24) return -EINVAL;  // sizeof(struct robust_list_head)
  c.state.robust_list = a.arg[0];
  return 0;
}

std::int64_t sys_enosys(SyscallContext&, const SyscallArgs&) { return -ENOSYS; }
std::int64_t sys_enoent(SyscallContext&, const SyscallArgs&) { return -ENOENT; }

std::int64_t sys_prlimit64(SyscallContext& c, const SyscallArgs& a) {
  if (a.arg[0] != 0 && a.arg[0] != 1) return -ESRCH;
  if (a.arg[2] != 0) return -EPERM;  // the guest cannot raise or lower its limits
  if (a.arg[3] == 0) return 0;
  std::uint64_t limit = RLIM_INFINITY;
  switch (a.arg[1]) {
    case RLIMIT_STACK: limit = kStackBytes; break;
    case RLIMIT_NOFILE: limit = kChannelFd + 1; break;
    case RLIMIT_AS: case RLIMIT_DATA: limit = c.memory.size(); break;
    default: if (a.arg[1] >= RLIM_NLIMITS) return -EINVAL;
  }
  const std::uint64_t pair[2] = {limit, limit};
  return c.state.space.copy_to_guest(c.memory, a.arg[3], std::as_bytes(std::span(pair))) ? 0 : -EFAULT;
}

std::int64_t sys_getrandom(SyscallContext& c, const SyscallArgs& a) {
  if ((a.arg[2] & ~std::uint64_t{GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE}) != 0) return -EINVAL;
  std::vector<std::byte> bytes(std::min<std::uint64_t>(a.arg[1], 256));  // as a short read
  c.random(std::span(bytes));
  if (!c.state.space.copy_to_guest(c.memory, a.arg[0], std::span<const std::byte>(bytes))) return -EFAULT;
  return static_cast<std::int64_t>(bytes.size());
}

std::int64_t sys_clock_gettime(SyscallContext& c, const SyscallArgs& a) {
  std::uint64_t ts[2] = {0, 0};
  if (const std::int64_t rc = c.clock(static_cast<int>(a.arg[0]), ts[0], ts[1]); rc != 0) return rc;
  return c.state.space.copy_to_guest(c.memory, a.arg[1], std::as_bytes(std::span(ts))) ? 0 : -EFAULT;
}

// One thread, so nobody ever waits: a wake wakes no one, a wait whose word changed is
// -EAGAIN, and a wait that would block forever is a spurious wake-up (-EINTR: glibc loops,
// and the budget ends a guest that spins on it). glibc aborts on -ENOSYS here.
std::int64_t sys_futex(SyscallContext& c, const SyscallArgs& a) {
  constexpr std::uint64_t kCommandMask = 0x7f;  // without FUTEX_PRIVATE_FLAG / FUTEX_CLOCK_REALTIME
  switch (a.arg[1] & kCommandMask) {
    case 1:   // FUTEX_WAKE
    case 10:  // FUTEX_WAKE_BITSET
      return 0;
    case 0:   // FUTEX_WAIT
    case 9: {  // FUTEX_WAIT_BITSET
      std::uint32_t word = 0;
      if (!c.state.space.copy_from_guest(c.memory, a.arg[0], std::as_writable_bytes(std::span(&word, 1)))) return -EFAULT;
      return word != static_cast<std::uint32_t>(a.arg[2]) ? -EAGAIN : -EINTR;
    }
    default: return -ENOSYS;
  }
}

std::int64_t sys_exit_group(SyscallContext& c, const SyscallArgs& a) {
  c.state.exit_status = static_cast<int>(a.arg[0] & 0xff);
  return 0;
}

struct Row {
  long number;
  std::string_view name;
  Handler handler;
  std::string_view who;  // documentation: who in the guest needs it
};

// clang-format off
constexpr Row kRows[] = {
  {SYS_read,            "read",            sys_read,            "guest runtime: run requests and host replies from the channel (fd 3)"},
  {SYS_write,           "write",           sys_write,           "guest runtime: host calls and results on the channel (fd 3)"},
  {SYS_mmap,            "mmap",            sys_mmap,            "glibc start-up, the arena and C++ heap (MAP_FIXED_NOREPLACE), LuaJIT's JIT"},
  {SYS_mprotect,        "mprotect",        sys_mprotect,        "glibc start-up (RELRO); LuaJIT's JIT flips W and X"},
  {SYS_munmap,          "munmap",          sys_munmap,          "glibc; LuaJIT's JIT frees machine code"},
  {SYS_brk,             "brk",             sys_brk,             "glibc start-up: static TLS and early malloc"},
  {SYS_mremap,          "mremap",          sys_mremap,          "glibc realloc of large blocks"},
  {SYS_readlink,        "readlink",        sys_enoent,          "glibc start-up: /proc/self/exe (there is no file system)"},
  {SYS_arch_prctl,      "arch_prctl",      sys_arch_prctl,      "glibc start-up: the TLS pointer in FS"},
  {SYS_futex,           "futex",           sys_futex,           "glibc locks (single-threaded: wake is a no-op); glibc aborts on -ENOSYS"},
  {SYS_set_tid_address, "set_tid_address", sys_set_tid_address, "glibc start-up"},
  {SYS_clock_gettime,   "clock_gettime",   sys_clock_gettime,   "count hook: the deadline's steady_clock (no vDSO in the microVM)"},
  {SYS_exit_group,      "exit_group",      sys_exit_group,      "guest runtime: the end of a run"},
  {SYS_set_robust_list, "set_robust_list", sys_set_robust_list, "glibc start-up"},
  {SYS_prlimit64,       "prlimit64",       sys_prlimit64,       "glibc start-up: the stack limit"},
  {SYS_getrandom,       "getrandom",       sys_getrandom,       "glibc malloc's tcache key; lua_newstate seeds LuaJIT's PRNG"},
  {SYS_rseq,            "rseq",            sys_enosys,          "glibc start-up: without rseq it goes on (-ENOSYS)"},
};
// clang-format on

constexpr std::size_t kTableSize = 512;

struct Table {
  std::array<Handler, kTableSize> handler{};
  std::array<std::string_view, kTableSize> name{};
};

constexpr Table build_table() {
  Table table;
  for (const auto& row : kRows) {
    table.handler[static_cast<std::size_t>(row.number)] = row.handler;
    table.name[static_cast<std::size_t>(row.number)] = row.name;
  }
  return table;
}

constexpr Table kTable = build_table();
}  // namespace

std::int64_t dispatch_syscall(SyscallContext& context, const SyscallArgs& args) {
  if (args.number >= kTableSize || kTable.handler[args.number] == nullptr) return -ENOSYS;
  return kTable.handler[args.number](context, args);
}

std::string_view syscall_name(std::uint64_t number) noexcept {
  return number < kTableSize ? kTable.name[number] : std::string_view{};
}

void host_random(std::span<std::byte> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    // SAFETY: writes at most out.size() - done bytes into out, past the `done` already filled.
    const ssize_t got = ::getrandom(out.data() + done, out.size() - done, 0);
    if (got > 0) done += static_cast<std::size_t>(got);
    else if (got < 0 && errno != EINTR) std::abort();  // no randomness: never hand out zeros
  }
}

std::int64_t host_clock(int clock, std::uint64_t& seconds, std::uint64_t& nanoseconds) {
  if (clock != CLOCK_MONOTONIC && clock != CLOCK_REALTIME && clock != CLOCK_BOOTTIME &&
      clock != CLOCK_MONOTONIC_COARSE && clock != CLOCK_REALTIME_COARSE) {
    return -EINVAL;
  }
  timespec now{};
  ::clock_gettime(clock, &now);
  seconds = static_cast<std::uint64_t>(now.tv_sec);
  nanoseconds = static_cast<std::uint64_t>(now.tv_nsec);
  return 0;
}

}  // namespace sojourn::sandbox::kvm
