// The monitor's seccomp table without /dev/kvm: it compiles, every row says who needs it,
// every KVM ioctl of sandbox/kvm has a row; and fork-and-filter: a child installs the filter,
// the monitor's calls work, anything else ends the process with SIGSYS and a line naming it.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/kvm/kvm_abi.hpp"
#include "sandbox/kvm/monitor_filter.hpp"
#include "sandbox/kvm/vcpu.hpp"

namespace {

using namespace sojourn::sandbox::kvm;

constexpr int kChannel = 50;  // the child's channel descriptor (above the pipes the test opens)

// A forked child must never return into the test runner, whatever happens in it.
[[noreturn]] void child_exit(int status) {
  ::syscall(SYS_exit_group, status);
  __builtin_unreachable();
}

struct ChildEnd {
  int status = 0;
  std::string stderr_text;
};

// Runs `body` in a forked child after install_monitor_filter(options), with a socket as
// descriptor kChannel (one byte waiting in it) and stderr captured. The body's negative
// return is exit status 1.
ChildEnd in_filtered_child(const MonitorFilterOptions& options, const std::function<long()>& body) {
  int pair[2];
  int err[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
  REQUIRE(::pipe(err) == 0);
  char byte = 'x';
  REQUIRE(::write(pair[0], &byte, 1) == 1);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(pair[1], kChannel);
    ::dup2(err[1], STDERR_FILENO);
    ::close(err[0]);
    if (!install_monitor_filter(options)) child_exit(99);
    child_exit(body() < 0 ? 1 : 0);
  }
  ::close(pair[1]);
  ::close(err[1]);
  ChildEnd end;
  char buffer[512];
  for (;;) {
    const ssize_t got = ::read(err[0], buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    end.stderr_text.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(err[0]);
  while (::waitpid(pid, &end.status, 0) < 0 && errno == EINTR) {
  }
  ::close(pair[0]);
  return end;
}

ChildEnd in_filtered_child(const std::function<long()>& body) { return in_filtered_child(MonitorFilterOptions{}, body); }

bool allowed(const ChildEnd& end) {
  if (!(WIFEXITED(end.status) && WEXITSTATUS(end.status) == 0)) {
    MESSAGE("the child did not exit 0: status " << end.status << ", stderr: " << end.stderr_text);
    return false;
  }
  return true;
}

// Ended by SIGSYS, after the report handler named `syscall`.
bool refused(const ChildEnd& end, const std::string& syscall) {
  const bool by_sigsys = WIFSIGNALED(end.status) && WTERMSIG(end.status) == SIGSYS;
  const std::string expected = "sojourn microVM monitor: seccomp refused syscall " + syscall + " (";
  if (!by_sigsys || end.stderr_text.rfind(expected, 0) != 0) {
    MESSAGE("expected SIGSYS and '" << expected << "...', got status " << end.status << ", stderr: " << end.stderr_text);
    return false;
  }
  return true;
}

long raw_mmap(int prot) { return ::syscall(SYS_mmap, nullptr, 4096, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); }

// "kSetCpuid2" -> "KVM_SET_CPUID2".
std::string kvm_name_of_abi(const std::string& constant) {
  std::string name = "KVM";
  for (std::size_t i = 1; i < constant.size(); ++i) {
    if (std::isupper(static_cast<unsigned char>(constant[i]))) name += '_';
    name += static_cast<char>(std::toupper(static_cast<unsigned char>(constant[i])));
  }
  return name;
}

}  // namespace

TEST_CASE("the monitor table compiles to a BPF program for each set of options") {
  auto full = compile_monitor_filter(MonitorFilterOptions{});
  MonitorFilterOptions serve_only;
  serve_only.allow_boot = false;
  serve_only.channel_fds = {7, 9};
  auto narrow = compile_monitor_filter(serve_only);
  MonitorFilterOptions kill;
  kill.default_action = MonitorDefault::kill_process;
  auto killing = compile_monitor_filter(kill);
  REQUIRE(full.ok());
  REQUIRE(narrow.ok());
  REQUIRE(killing.ok());
  CHECK(full->size() > 50);
  CHECK(narrow->size() != full->size());
  CHECK(killing->size() < full->size());  // no kill row: it is the default there
}

TEST_CASE("every row of the monitor table names who needs it, and ioctl rows name their KVM request") {
  std::set<std::pair<int, std::uint64_t>> seen;
  std::set<std::string> syscalls;
  std::size_t ioctls = 0;
  for (const MonitorRow& row : monitor_syscall_table()) {
    const std::string row_name = std::string(row.syscall) + " " + row.what;
    INFO(row_name);
    CHECK(std::string(row.who).size() > 15);
    CHECK(seen.insert({row.nr, row.value}).second);  // no row twice
    syscalls.insert(row.syscall);
    if (std::string(row.syscall) == "ioctl") {
      ++ioctls;
      CHECK(row.rule == MonitorArg::equals_arg1);
      CHECK(std::string(row.what).rfind("KVM_", 0) == 0);
      CHECK((row.value >> 8 & 0xff) == KVMIO);  // the request's type byte
    }
    const std::string listed = std::string(row.syscall) + (row.what[0] != '\0' ? " " : "") + row.what +
                               (row.boot_only ? " [boot]" : "") + ": " + row.who;
    MESSAGE(listed);
  }
  CHECK(ioctls == 18);
  for (const char* never : {"open", "openat", "socket", "connect", "execve", "ptrace", "fork", "vfork", "rt_sigaction",
                            "process_vm_writev", "bpf", "seccomp", "prctl", "mount", "setns", "unshare"}) {
    CHECK_MESSAGE(syscalls.count(never) == 0, std::string(never));
  }
}

TEST_CASE("every KVM ioctl in the monitor's sources has a row (besides KvmSystem::open's, made before the filter)") {
  std::set<std::string> rows;
  for (const MonitorRow& row : monitor_syscall_table()) rows.insert(row.what);
  const std::set<std::string> before_filter{"KVM_GET_API_VERSION", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE"};
  const std::regex kvm_name(R"(\bKVM_[A-Z0-9_]+\b)");
  const std::regex abi_name(R"(abi::(k[A-Za-z0-9]+))");
  std::size_t found = 0;
  for (const auto& entry : std::filesystem::directory_iterator(SOJOURN_KVM_SOURCE_DIR)) {
    if (entry.path().extension() != ".cpp" || entry.path().filename() == "monitor_filter.cpp") continue;
    std::ifstream in(entry.path());
    std::string line;
    while (std::getline(in, line)) {
      if (line.find("ioctl") == std::string::npos) continue;
      for (std::sregex_iterator it(line.begin(), line.end(), kvm_name), end; it != end; ++it) {
        const std::string name = it->str();
        if (name == "KVM_API_VERSION" || before_filter.count(name) != 0) continue;
        ++found;
        CHECK_MESSAGE(rows.count(name) == 1, entry.path().filename().string() << ": " << name << " has no row");
      }
      for (std::sregex_iterator it(line.begin(), line.end(), abi_name), end; it != end; ++it) {
        const std::string name = kvm_name_of_abi((*it)[1].str());
        ++found;
        CHECK_MESSAGE(rows.count(name) == 1, entry.path().filename().string() << ": " << name << " has no row");
      }
    }
  }
  CHECK(found > 20);
}

TEST_CASE("under the monitor filter the monitor's own calls work") {
  CHECK(allowed(in_filtered_child([] {
    const long at = raw_mmap(PROT_READ | PROT_WRITE);
    if (at < 0 || ::syscall(SYS_mprotect, at, 4096, PROT_READ) != 0) return -1L;
    if (::syscall(SYS_madvise, at, 4096, MADV_DONTNEED) != 0) return -1L;
    return ::syscall(SYS_munmap, at, 4096);
  })));
  CHECK(allowed(in_filtered_child([] {  // GuestMemory: a memfd, its size, a dup for a fork, close
    const int fd = static_cast<int>(::syscall(SYS_memfd_create, "guest", MFD_CLOEXEC));
    if (fd < 0 || ::syscall(SYS_ftruncate, fd, 1 << 20) != 0) return -1L;
    const long dup = ::syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return -1L;
    const long view = ::syscall(SYS_mmap, nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE, dup, 0);
    if (view < 0) return -1L;
    return ::syscall(SYS_close, dup) | ::syscall(SYS_close, fd);
  })));
  CHECK(allowed(in_filtered_child([] {  // the channel, randomness, clocks, sleeping
    char byte = 0;
    if (::syscall(SYS_read, kChannel, &byte, 1) != 1 || ::syscall(SYS_write, kChannel, "y", 1) != 1) return -1L;
    char seed[16];
    timespec now{};
    const timespec nap{0, 1000};
    if (::syscall(SYS_getrandom, seed, sizeof seed, 0) != sizeof seed) return -1L;
    if (::syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &now) != 0) return -1L;
    return ::syscall(SYS_nanosleep, &nap, nullptr);
  })));
  CHECK(allowed(in_filtered_child([] {  // the budget timer: a thread that kicks this one
    static std::atomic<int> kicks{0};
    const pthread_t self = ::pthread_self();
    std::thread timer([self] {
      void* block = std::malloc(1 << 20);  // malloc in a new thread: a new arena
      std::free(block);
      ::pthread_kill(self, kKickSignal);
      kicks.fetch_add(1);
    });
    timer.join();
    return kicks.load() == 1 ? 0L : -1L;
  })));
  CHECK(allowed(in_filtered_child([] {  // a KVM request on a non-KVM descriptor: refused by the kernel, not by seccomp
    return ::syscall(SYS_ioctl, kChannel, KVM_RUN, 0) == -1 ? 0L : -1L;
  })));
  CHECK(allowed(in_filtered_child([] {  // clone3 is answered -ENOSYS: glibc falls back to clone
    const long rc = ::syscall(SYS_clone3, nullptr, 0);
    return rc == -1 && errno == ENOSYS ? 0L : -1L;
  })));
}

// Many threads alive at once, each mallocs: glibc gives each a new arena and, past eight,
// sizes the arena limit from the number of CPUs (read from /sys) unless it was set.
void many_threads_malloc() {
  constexpr int kThreads = 24;
  static std::atomic<int> started{0};
  static std::atomic<bool> go{false};
  static std::atomic<void*> blocks[kThreads];  // kept, so that the compiler cannot drop the malloc
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([i] {
      blocks[i].store(std::malloc(256));
      started.fetch_add(1);
      while (!go.load()) {
      }
      std::free(blocks[i].load());
    });
  }
  while (started.load() < kThreads) {
  }
  go.store(true);
  for (auto& t : threads) t.join();
}

// A fork child inherits the parent's malloc state and never sizes the arena limit: this
// test runs itself again in a fresh process (exec), as a node's threads would be.
TEST_CASE("under the monitor filter a thread's malloc needs no /sys even with many arenas") {
  if (std::getenv("SOJOURN_MONITOR_FILTER_ARENAS") != nullptr) {  // the exec'd process
    if (!install_monitor_filter()) child_exit(99);
    many_threads_malloc();
    child_exit(0);
  }
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setenv("SOJOURN_MONITOR_FILTER_ARENAS", "1", 1);
    ::execl("/proc/self/exe", "monitor_filter_test", "-tc=under the monitor filter a thread's malloc*", nullptr);
    child_exit(98);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("under the monitor filter anything else ends the process with SIGSYS, named on stderr") {
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY); }), "openat"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_open, "/etc/passwd", O_RDONLY); }), "open"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0); }), "socket"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_execve, "/bin/true", nullptr, nullptr); }), "execve"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_ptrace, 0, 0, 0, 0); }), "ptrace"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_rt_sigaction, SIGSYS, nullptr, nullptr, 8); }),
                "rt_sigaction"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_prctl, PR_SET_DUMPABLE, 1, 0, 0, 0); }), "prctl"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_fcntl, kChannel, F_SETFL, O_NONBLOCK); }), "fcntl"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_tgkill, ::getpid(), ::gettid(), SIGKILL); }), "tgkill"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_memfd_create, "x", 0); }), "memfd_create"));
}

TEST_CASE("under the monitor filter only the KVM requests of the table pass ioctl") {
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_ioctl, kChannel, TCGETS, 0); }), "ioctl"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_ioctl, kChannel, FIONREAD, 0); }), "ioctl"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_ioctl, kChannel, KVM_CREATE_IRQCHIP, 0); }), "ioctl"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_ioctl, kChannel, KVM_GET_API_VERSION, 0); }), "ioctl"));
  // The upper half of the request must be zero too (the kernel would drop it).
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_ioctl, kChannel, (1UL << 32) | KVM_RUN, 0); }), "ioctl"));
}

TEST_CASE("under the monitor filter memory is never executable and clone makes threads only") {
  CHECK(refused(in_filtered_child([] { return raw_mmap(PROT_READ | PROT_EXEC); }), "mmap"));
  CHECK(refused(in_filtered_child([] {
    const long at = raw_mmap(PROT_READ | PROT_WRITE);
    return ::syscall(SYS_mprotect, at, 4096, PROT_READ | PROT_EXEC);
  }), "mprotect"));
  CHECK(refused(in_filtered_child([] { return ::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0); }), "clone"));  // fork()
  CHECK(refused(in_filtered_child([] {
    return ::syscall(SYS_clone, CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_NEWNET, 0, 0, 0, 0);
  }), "clone"));
}

TEST_CASE("with channel descriptors, read and write work on those and on stderr only") {
  MonitorFilterOptions options;
  options.channel_fds = {kChannel};
  CHECK(allowed(in_filtered_child(options, [] {
    char byte = 0;
    if (::syscall(SYS_read, kChannel, &byte, 1) != 1) return -1L;
    if (::syscall(SYS_write, STDERR_FILENO, "", 0) != 0) return -1L;
    if (::send(kChannel, "y", 1, MSG_NOSIGNAL) != 1) return -1L;  // MicrovmJail's ChannelEnd
    return ::syscall(SYS_shutdown, kChannel, SHUT_RDWR);
  })));
  CHECK(refused(in_filtered_child(options, [] { return ::send(1, "y", 1, MSG_NOSIGNAL); }), "sendto"));
  CHECK(refused(in_filtered_child(options, [] { return ::syscall(SYS_write, 1, "x", 1); }), "write"));
  CHECK(refused(in_filtered_child(options, [] {
    char byte = 0;
    return ::syscall(SYS_read, 0, &byte, 1);
  }), "read"));
}

TEST_CASE("a thread serving forks only can drop the boot rows") {
  MonitorFilterOptions options;
  options.allow_boot = false;
  CHECK(refused(in_filtered_child(options, [] { return ::syscall(SYS_memfd_create, "guest", MFD_CLOEXEC); }),
                "memfd_create"));
  CHECK(refused(in_filtered_child(options, [] { return ::syscall(SYS_ioctl, kChannel, abi::kGetSupportedCpuid, 0); }),
                "ioctl"));
  CHECK(allowed(in_filtered_child(options, [] {
    const long rc = ::syscall(SYS_ioctl, kChannel, KVM_SET_USER_MEMORY_REGION, 0);
    return rc == -1 ? 0L : -1L;
  })));
}

TEST_CASE("the filter holds for the installing thread and its new threads, not for the others") {
  CHECK(allowed(in_filtered_child([] { return 0L; })));  // the baseline
  // A thread started before the filter keeps its freedom (no TSYNC): it opens a file.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);  // the expected report goes there
    ::dup2(null, STDERR_FILENO);
    std::atomic<int> stage{0};
    long opened = -1;
    std::thread before([&] {
      while (stage.load() == 0) ::sched_yield();
      opened = ::syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDONLY);
    });
    if (!install_monitor_filter()) child_exit(99);
    stage.store(1);
    before.join();
    if (opened < 0) child_exit(2);
    std::thread after([] { ::syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDONLY); });  // dies
    after.join();
    child_exit(0);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSYS);
}

TEST_CASE("in kill mode a refused syscall ends the process with SIGSYS and no report") {
  MonitorFilterOptions options;
  options.default_action = MonitorDefault::kill_process;
  const ChildEnd end = in_filtered_child(options, [] { return ::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0); });
  CHECK(WIFSIGNALED(end.status));
  CHECK(WTERMSIG(end.status) == SIGSYS);
  CHECK(end.stderr_text.empty());
}

TEST_CASE("the report names the refused syscall and its number exactly") {
  const ChildEnd end = in_filtered_child([] { return ::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0); });
  CHECK(end.stderr_text == "sojourn microVM monitor: seccomp refused syscall socket (41); ending the process\n");
}
