// The zygote's loop: spawn requests from the host (each with the run's channel attached),
// pidfds of running guests, and exit reports. Single-threaded, so a raw clone3 is a safe
// fork here (no lock of another thread can be held across it).
#include "sandbox/guest/zygote.hpp"

#include "sandbox/process/fd_passing.hpp"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "sandbox/guest/jail_child.hpp"
#include "sandbox/guest/syscall_filter.hpp"
#include "sandbox/guest/zygote_image.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox::guest {

namespace {

constexpr std::uint32_t kWantedNamespaces = CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC;
constexpr std::size_t kMaxControlMessage = 4096;

struct Child {
  std::uint64_t id;
  pid_t pid;
  int pidfd;
};

// fork() with namespaces and a pidfd; 0 in the child. clone3 first; clone where a
// container's seccomp profile answers clone3 with ENOSYS (Docker's default does, so that
// libc falls back).
pid_t clone_guest(std::uint64_t flags, int* pidfd) {
  static bool clone3_missing = false;
  const std::uint64_t all = flags | (pidfd != nullptr ? CLONE_PIDFD : 0);
  if (!clone3_missing) {
    clone_args args{};
    args.flags = all;
    // SAFETY: the kernel writes the pidfd into this int, which outlives the call.
    args.pidfd = reinterpret_cast<std::uintptr_t>(pidfd);
    args.exit_signal = SIGCHLD;
    const auto pid = static_cast<pid_t>(::syscall(SYS_clone3, &args, sizeof args));
    if (pid >= 0 || errno != ENOSYS) return pid;
    clone3_missing = true;
  }
  // x86-64 order: flags, stack, parent_tid (where CLONE_PIDFD puts the pidfd), child_tid, tls.
  return static_cast<pid_t>(::syscall(SYS_clone, all | SIGCHLD, nullptr, pidfd, nullptr, nullptr));
}

// A forked guest's own stack-protector canary. clone3 copies the zygote's, so without this
// every guest of one zygote shares it, and a canary leaked by one (a stack read through a
// LuaJIT bug) would let another's overflow pass its checks. glibc keeps the canary in the
// TCB (fs:0x28) and every instrumented frame keeps a copy, checked on return. This runs in
// the child right after the fork, and then only become_guest follows, which never returns:
// the frames live at that moment (main down to spawn) hold the old value but none of them
// ever returns in the child, so no copy needs rewriting (the microVM fork, which pauses
// mid-call, rewrites them instead: sandbox/kvm/fork_secrets.hpp). Every frame made after it
// gets the new value. This function itself carries no canary (it changes the value under
// its own frame) and is never inlined into an instrumented caller.
[[gnu::no_stack_protector, gnu::noinline]] void reseed_stack_guard() {
  std::uint64_t canary = 0;
  // glibc keeps the low byte zero, so that a string overflow stops at it.
  while ((canary & ~std::uint64_t{0xff}) == 0) {
    // SAFETY: getrandom writes at most sizeof canary bytes into it.
    const long got = ::syscall(SYS_getrandom, &canary, sizeof canary, 0);
    if (got == static_cast<long>(sizeof canary)) continue;
    // Never run a guest on the zygote's canary: without randomness it ends, unanswered.
    if (got >= 0 || errno != EINTR) ::syscall(SYS_exit_group, 1);
    canary = 0;
  }
  canary &= ~std::uint64_t{0xff};
  // SAFETY: fs points to this thread's TCB (static glibc, x86-64); 0x28 is its stack_guard.
  asm volatile("movq %0, %%fs:0x28" : : "r"(canary) : "memory");
}

// Unregisters the restartable-sequence (rseq) area glibc registered for the zygote's thread
// at start. Registered, the kernel writes it on every return to user space after a preemption
// or a migration, and first of all in every fork on its way out of clone3: the area shares its
// page with the TCB, which the fork has just made copy-on-write, so that write was a page
// fault in each new guest before any of its code ran, and one more in the zygote, per spawn.
// Nothing in the zygote or a guest uses rseq (glibc reads the CPU number from it in
// sched_getcpu only, and asks the kernel once the area reads "uninitialised", as the kernel
// leaves it here). A guest inherits the zygote's registration, so it has none either.
void drop_rseq_area() {
  if (__rseq_size == 0) return;  // glibc registered none
  // SAFETY: glibc's area lies at this offset from the thread pointer (sys/rseq.h).
  void* area = static_cast<char*>(__builtin_thread_pointer()) + __rseq_offset;
  // A negative CPU number: glibc's registration failed (a kernel without rseq, a container's
  // filter), so the kernel writes nothing there.
  if (static_cast<std::int32_t>(static_cast<volatile struct rseq*>(area)->cpu_id) < 0) return;
  // The length it was registered with: __rseq_size, or the 32-byte area of glibc releases
  // whose __rseq_size names the features in use.
  for (const unsigned length : {__rseq_size, 32u}) {
    if (::syscall(SYS_rseq, area, length, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) == 0) return;
  }
  log_warn("zygote", std::string("guests fault in their thread's page at fork: rseq stays registered: ") +
                         std::strerror(errno));
}

bool write_proc_file(const char* path, const std::string& text) {
  const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return written;
}

// Moves the zygote into a new network namespace, which every guest it forks then shares
// instead of getting one of its own: a fresh one cost ~0.4 ms of host CPU per clone
// (copy_net_ns), over half of a guest's fork. It stays empty: no interface but a loopback
// that is down, and no guest can make a socket (syscall_filter.cpp allows no socket call;
// docs/jails.md "Namespaces"). 0 or the errno, with `error_out` saying what failed.
//
// Who holds a capability over it: its owner is the user namespace the zygote is in when it
// makes it. A privileged zygote (root in the node's user namespace) makes it there; an
// unprivileged one makes a user namespace to own it, maps its own uid and gid to themselves
// (so the host's signals, pidfds and process_vm_writev reach the guests as before), and
// drops every capability it got there. A guest lives in a user namespace of its own below
// that owner (CLONE_NEWUSER at its fork), and capabilities in a child user namespace give
// none in its parent: no guest can configure this namespace.
int enter_shared_net_namespace(std::string& error_out) {
  if (test_refuses_shared_net()) {
    error_out = "refused by the test guest's hook";
    return EPERM;
  }
  if (::unshare(CLONE_NEWNET) == 0) return 0;
  const int privileged_error = errno;
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  if (::unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0) {
    const int error = errno;
    error_out = std::string("unshare(net): ") + std::strerror(privileged_error) +
                ", unshare(user, net): " + std::strerror(error);
    return error;
  }
  // From here on the zygote is inside the new user namespace, whatever happens next.
  int error = 0;
  if (!write_proc_file("/proc/self/setgroups", "deny") ||
      !write_proc_file("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1") ||
      !write_proc_file("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1")) {
    error = errno;
    error_out = std::string("mapping the zygote's ids: ") + std::strerror(error);
  }
  // Guests fork without CLONE_NEWUSER where the kernel refuses one: they must not inherit
  // these capabilities. Dropping capabilities is always allowed; if it still fails the
  // zygote ends rather than fork guests holding them.
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {};
  // SAFETY: capset reads the header and _LINUX_CAPABILITY_U32S_3 data structs.
  if (::syscall(SYS_capset, &header, none) != 0) {
    log_error("zygote", std::string("cannot drop its capabilities: ") + std::strerror(errno));
    ::syscall(SYS_exit_group, 1);
  }
  return error;
}

// 0 when a child can be made with `flags`, else the errno.
int probe_namespaces(std::uint64_t flags) {
  const pid_t pid = clone_guest(flags, nullptr);
  if (pid == 0) ::syscall(SYS_exit_group, 0);
  if (pid < 0) return errno;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return 0;
}

const char* namespace_name(std::uint32_t flag) {
  switch (flag) {
    case CLONE_NEWUSER: return "user";
    case CLONE_NEWNET: return "net";
    case CLONE_NEWNS: return "mount";
    case CLONE_NEWPID: return "pid";
    case CLONE_NEWIPC: return "ipc";
  }
  return "?";
}

class Zygote {
 public:
  Zygote(int control, bool namespaces) : control_(control), want_namespaces_(namespaces) {}

  int run() {
    drop_rseq_area();
    for (bool jit : {false, true}) {
      Result<CompiledFilter> filter = compile_guest_filter(jit, DefaultAction::trap_and_report);
      if (!filter) {
        log_error("zygote", filter.error().message);
        return 1;
      }
      (jit ? jit_filter_ : filter_) = std::move(*filter);
    }
    choose_namespaces();
    warm_up();
    // After the warm-up, before the first fork: guests inherit the image's page table.
    if (const ImageShare share = share_image_with_forks(); !share.error.empty()) {
      log_warn("zygote", "guests fault in part of the executable's image: " + share.error);
    }
    channel::Hello hello{channel::kProtocolVersion, static_cast<std::uint32_t>(::getpid()), namespaces_, fallback_};
    if (!send(channel::encode_frame(hello), -1)) return 1;
    while (serve_once()) {
    }
    for (const Child& child : children_) ::syscall(SYS_pidfd_send_signal, child.pidfd, SIGKILL, nullptr, 0);
    return 0;
  }

 private:
  // The shared network namespace first (then no guest clones one); then every other
  // namespace at once if the kernel allows; else each one alone (inside a user namespace
  // when that works), with the reasons for the ones that failed.
  void choose_namespaces() {
    if (!want_namespaces_) {
      fallback_ = "namespaces turned off by the node's options";
      return;
    }
    std::string shared_error;
    const bool shared_net = enter_shared_net_namespace(shared_error) == 0;
    if (!shared_net) log_warn("zygote", "each guest gets a network namespace of its own: no shared one: " + shared_error);
    const std::uint32_t wanted = shared_net ? kWantedNamespaces & ~std::uint32_t{CLONE_NEWNET} : kWantedNamespaces;
    // What the host is told: CLONE_NEWNET means "not the host's network namespace".
    const std::uint32_t reported_net = shared_net ? CLONE_NEWNET | channel::kSharedNetNamespace : 0;
    if (probe_namespaces(wanted) == 0) {
      clone_flags_ = wanted;
      namespaces_ = wanted | reported_net;
      return;
    }
    const int user_error = probe_namespaces(CLONE_NEWUSER);
    const std::uint32_t base = user_error == 0 ? CLONE_NEWUSER : 0;
    clone_flags_ = base;
    if (user_error != 0) add_fallback(CLONE_NEWUSER, user_error);
    for (std::uint32_t flag : {CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWIPC}) {
      if ((wanted & flag) == 0) continue;
      const int error = probe_namespaces(base | flag);
      if (error == 0) {
        clone_flags_ |= flag;
      } else {
        add_fallback(flag, error);
      }
    }
    namespaces_ = clone_flags_ | reported_net;
    log_warn("zygote", "guests run without some namespaces: " + fallback_);
  }

  void add_fallback(std::uint32_t flag, int error) {
    if (!fallback_.empty()) fallback_ += "; ";
    fallback_ += std::string(namespace_name(flag)) + ": " + std::strerror(error);
  }

  // Touches the Lua runtime's code and data once, so each fork shares them warm. The
  // second run raises a Lua error: LuaJIT unwinds with the C++ unwinder, whose first use in
  // a process sorts the static binary's unwind tables (about 2.5 ms here); done once in the
  // zygote, every guest inherits it, and an agent.go or error() in a guest costs nothing extra.
  static void warm_up() {
    RunInput input;
    input.source = "return ('x'):rep(3)";
    input.limits = Limits{1'000'000, 1u << 20, 1000};
    (void)run_lua(input, nullptr);
    input.source = "local ok = pcall(error, 'warm') error('warm')";
    (void)run_lua(input, nullptr);
  }

  bool serve_once() {
    std::vector<pollfd> fds;
    fds.push_back({control_, POLLIN, 0});
    for (const Child& child : children_) fds.push_back({child.pidfd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) return errno == EINTR;
    for (std::size_t i = fds.size() - 1; i >= 1; --i) {
      if (fds[i].revents != 0) reap(i - 1);
    }
    if (fds[0].revents == 0) return true;
    return receive_request();
  }

  bool receive_request() {
    std::uint8_t buffer[kMaxControlMessage];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    iovec iov{buffer, sizeof buffer};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(control_, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    if (n == 0) return false;  // the host is gone
    int channel_fd = -1;
    // SAFETY: CMSG_FIRSTHDR/CMSG_DATA walk the control buffer the kernel filled in.
    if (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr && c->cmsg_type == SCM_RIGHTS) {
      std::memcpy(&channel_fd, CMSG_DATA(c), sizeof channel_fd);
    }
    const auto size = static_cast<std::size_t>(n);
    Result<channel::SpawnRequest> request =
        size >= channel::kHeaderBytes && buffer[4] == static_cast<std::uint8_t>(channel::Kind::spawn)
            ? channel::decode_payload<channel::SpawnRequest>({buffer + channel::kHeaderBytes, size - channel::kHeaderBytes})
            : Result<channel::SpawnRequest>(channel::bad_message(channel::Kind::spawn, "not a spawn request"));
    if (!request || channel_fd < 0) {
      // A broken request (a host bug) is dropped; the host times the spawn out.
      log_error("zygote", request ? "a spawn request came without a channel" : request.error().message);
      if (channel_fd >= 0) ::close(channel_fd);
      return true;
    }
    spawn(*request, channel_fd);
    ::close(channel_fd);
    return true;
  }

  void spawn(const channel::SpawnRequest& request, int channel_fd) {
    int pidfd = -1;
    const pid_t pid = clone_guest(clone_flags_, &pidfd);
    if (pid == 0) {
      reseed_stack_guard();  // only become_guest, which never returns, may follow
      become_guest(request, channel_fd, request.allow_jit ? jit_filter_ : filter_,
                   (clone_flags_ & CLONE_NEWUSER) != 0);
    }
    channel::Spawned reply{request.id, pid > 0 ? static_cast<std::uint32_t>(pid) : 0, ""};
    if (pid < 0) reply.error = std::string("cannot fork a guest: ") + std::strerror(errno);
    if (pid > 0) children_.push_back({request.id, pid, pidfd});
    send(channel::encode_frame(reply), pidfd);
  }

  void reap(std::size_t index) {
    const Child child = children_[index];
    children_.erase(children_.begin() + static_cast<std::ptrdiff_t>(index));
    siginfo_t info{};
    rusage usage{};
    while (::syscall(SYS_waitid, P_PIDFD, child.pidfd, &info, WEXITED, &usage) != 0 && errno == EINTR) {
    }
    ::close(child.pidfd);
    const auto micros = [](const timeval& t) {
      return static_cast<std::uint64_t>(t.tv_sec) * 1'000'000 + static_cast<std::uint64_t>(t.tv_usec);
    };
    channel::Exited exited{child.id, static_cast<std::uint32_t>(child.pid), info.si_code, info.si_status,
                           micros(usage.ru_utime) + micros(usage.ru_stime)};
    send(channel::encode_frame(exited), -1);
  }

  bool send(const std::vector<std::uint8_t>& frame, int fd) { return send_frame(control_, frame, fd); }


  int control_;
  bool want_namespaces_;
  CompiledFilter filter_;
  CompiledFilter jit_filter_;
  std::uint32_t clone_flags_ = 0;  // what each guest's fork makes
  std::uint32_t namespaces_ = 0;   // what the Hello reports (channel::Hello::namespaces)
  std::string fallback_;
  std::vector<Child> children_;
};

}  // namespace

int run_zygote(int control_fd, bool namespaces) {
  // The host starts the zygote with an empty environment; however it was started, the
  // guests forked from it get none (getenv in a guest finds nothing).
  ::clearenv();
  return Zygote(control_fd, namespaces).run();
}

}  // namespace sojourn::sandbox::guest
