// The guest's own jail set-up, in the order that matters: descriptors first (nothing else
// may leak in), then identity, memory, limits, and the filter last (it forbids the calls
// that came before it).
#include "sandbox/guest/jail_child.hpp"

#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>

#include "sandbox/guest/arena.hpp"
#include "sandbox/guest/guest_heap.hpp"
#include "sandbox/guest/guest_serve.hpp"
#include "sandbox/guest/guest_serve_internal.hpp"
#include "sandbox/guest/warm_state.hpp"

namespace sojourn::sandbox::guest {

namespace {

constexpr std::uint64_t kGuestOverheadBytes = 128u << 20;  // image, stack, JIT machine code
constexpr std::uint64_t kCxxHeapSlack = 64u << 20;         // the request, buffers
constexpr uid_t kNobody = 65534;

std::optional<FixedArena> g_arena;

[[noreturn]] void exit_now(int status) {
  ::syscall(SYS_exit_group, status);
  __builtin_unreachable();
}

[[noreturn]] void fail_setup(int fd, const std::string& what) {
  channel::RunDone done;
  done.code = static_cast<std::uint16_t>(Errc::internal);
  done.message = "internal error: guest set-up failed: " + what + ": " + std::strerror(errno);
  write_all(fd, channel::encode_frame(done));
  exit_now(1);
}

// Reports the forbidden syscall on the channel, then ends the process: SIGSYS is blocked
// inside its own handler, and `kill` is a KILL_PROCESS row, so the kernel kills the guest
// with SIGSYS. Async-signal-safe: a stack buffer and raw syscalls.
void report_sigsys(int /*sig*/, siginfo_t* info, void* /*context*/) {
  const auto frame = channel::seccomp_report_frame(static_cast<std::uint32_t>(info->si_syscall));
  ::syscall(SYS_write, kChannelFd, frame.data(), frame.size());
  ::syscall(SYS_kill, 0, SIGSYS);
  exit_now(128 + SIGSYS);  // not reached
}

// SIGXCPU at the CPU-time soft limit: the exit status tells the host why (the kernel's
// SIGKILL at the hard limit would not: rusage is too coarse to tell it from another kill).
void report_sigxcpu(int /*sig*/) { exit_now(channel::kCpuLimitExitStatus); }

// Whether a next request comes: waits (the filter allows a poll of one descriptor) until the
// channel has bytes, false when the host closed it instead. Bytes already read ahead, or a
// poll that is not answered, count as a request: serve_one_run then reads it (or its end).
bool next_request_comes(int fd) {
  if (serve_internal::bytes_kept(fd)) return true;
  pollfd channel{fd, POLLIN, 0};
  long ready = 0;
  do {
    // The raw syscall: the filter allows poll, not ppoll, whichever glibc picks.
    ready = ::syscall(SYS_poll, &channel, 1UL, -1L);
  } while (ready < 0 && errno == EINTR);
  return ready < 0 || (channel.revents & POLLIN) != 0;
}

// A warm pool's guest is forked with a budget of one instruction (its runs bring their own
// limits: process_jail.cpp, spawn_warm); a guest forked for one run, with that run's. A pool's
// guest always prepares first, so that every run of its principal, the first included,
// starts from the same prepared state (even collectgarbage('count') reads the same).
bool forked_for_a_pool(const Limits& limits) { return limits.cpu_instructions == 1; }

void set_limit(int fd, int resource, std::uint64_t value, const char* name, std::uint64_t hard_extra = 0) {
  const rlimit limit{value, value + hard_extra};
  if (::setrlimit(resource, &limit) != 0) fail_setup(fd, name);
}

}  // namespace

GuestRlimits guest_rlimits(const Limits& limits) {
  // Both heaps are mapped before the limit is set; it only leaves room for the image, the
  // stack and the JIT's machine code, and refuses any other mapping.
  return GuestRlimits{arena_bytes_for_quota(limits.memory_bytes) + kCxxHeapBytes + kGuestOverheadBytes,
                      channel::guest_cpu_seconds(limits)};
}

Result<void> install_arena(std::uint64_t quota_bytes) {
  Result<FixedArena> arena = FixedArena::map_at(kArenaBase, arena_bytes_for_quota(quota_bytes));
  if (!arena) return arena.error();
  g_arena.emplace(*arena);  // map_at has mapped the pages a Lua state's build writes
  use_lua_heap(&*g_arena);
  return {};
}

void become_guest(const channel::SpawnRequest& request, int channel_fd, const CompiledFilter& filter,
                  bool in_user_namespace) {
  // Before anything allocates: this guest's C++ blocks go to fresh pages of its own, not into
  // the ones the zygote freed (pages it shares with the zygote copy-on-write).
  begin_fresh_cxx_heap();
  // Die with the zygote (the host then sees the channel close).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (channel_fd != kChannelFd) {
    if (::dup2(channel_fd, kChannelFd) < 0) exit_now(1);
  }
  // Every descriptor but the channel goes: stdio and the zygote's control socket included.
  if (::syscall(SYS_close_range, 0, kChannelFd - 1, 0) != 0 ||
      ::syscall(SYS_close_range, kChannelFd + 1, ~0U, 0) != 0) {
    fail_setup(kChannelFd, "close_range");
  }
  if (!in_user_namespace && ::geteuid() == 0) {
    // No user namespace to hold the guest's root: run it as nobody instead.
    if (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
        ::setresuid(kNobody, kNobody, kNobody) != 0) {
      fail_setup(kChannelFd, "dropping to nobody");
    }
  }
  if (Result<void> arena = install_arena(request.limits.memory_bytes); !arena) {
    errno = ENOMEM;
    fail_setup(kChannelFd, arena.error().message);
  }
  // The C++ side may hold a result up to the quota three times over (Values, their
  // encoding, the frame), plus the request.
  limit_cxx_heap(4 * request.limits.memory_bytes + kCxxHeapSlack);
  const GuestRlimits limits = guest_rlimits(request.limits);
  set_limit(kChannelFd, RLIMIT_CORE, 0, "RLIMIT_CORE");
  set_limit(kChannelFd, RLIMIT_FSIZE, 0, "RLIMIT_FSIZE");
  set_limit(kChannelFd, RLIMIT_NOFILE, kChannelFd + 1, "RLIMIT_NOFILE");
  set_limit(kChannelFd, RLIMIT_NPROC, 0, "RLIMIT_NPROC");
  set_limit(kChannelFd, RLIMIT_CPU, limits.cpu_seconds, "RLIMIT_CPU", 1);
  set_limit(kChannelFd, RLIMIT_AS, limits.address_space, "RLIMIT_AS");
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

  struct sigaction action{};
  action.sa_sigaction = report_sigsys;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  if (::sigaction(SIGSYS, &action, nullptr) != 0) fail_setup(kChannelFd, "sigaction(SIGSYS)");
  struct sigaction cpu_action{};
  cpu_action.sa_handler = report_sigxcpu;
  sigemptyset(&cpu_action.sa_mask);
  if (::sigaction(SIGXCPU, &cpu_action, nullptr) != 0) fail_setup(kChannelFd, "sigaction(SIGXCPU)");
  // A mask inherited from the node (whose threads may block signals) must not hide the
  // report: with SIGSYS blocked the kernel would kill at once, number unknown.
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, SIGSYS);
  sigaddset(&unblock, SIGXCPU);
  if (::sigprocmask(SIG_UNBLOCK, &unblock, nullptr) != 0) fail_setup(kChannelFd, "sigprocmask");
  const bool pool_guest = forked_for_a_pool(request.limits);
  if (int rc = install_filter(filter); rc != 0) {
    errno = -rc;
    fail_setup(kChannelFd, "seccomp");
  }
  // A warm guest: its runs start from a prepared Lua state, and after each answered run its
  // arena goes back to that state's snapshot; it waits for the next request, and the host ends
  // it (a kill, or closing the channel) when it is not reused. Prepared after the filter, as
  // a run would be (lua_newstate's getrandom is allowed there). A warm pool's guest prepares
  // at once. A guest forked for one run (a cold run: process_jail.cpp's run_in_guest, which
  // writes the request right after the fork and kills the guest once it has the answer)
  // answers it first on a fresh state, as run_lua would: the state's preparation (a full
  // collection and a copy of the arena) is of use only to a second run. It is prepared only
  // when a second request comes, in the pristine arena the reset leaves, before that run;
  // until then the guest waits in poll, and a kill finds it there, having spent nothing.
  if (pool_guest) prepare_warm_state(request.allow_jit);
  bool prepared = pool_guest;
  while (serve_one_run(kChannelFd)) {
    reset_after_run();
    if (!prepared) {
      if (!next_request_comes(kChannelFd)) break;
      prepare_warm_state(request.allow_jit);
      prepared = true;
    }
  }
  exit_now(0);
}

}  // namespace sojourn::sandbox::guest
