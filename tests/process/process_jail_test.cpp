// Tests of the process jail: runs in forked, seccomp-filtered guests give the trusted
// level's results and errors; kills are reported precisely; the zygote is restarted.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <linux/nsfs.h>
#include <signal.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/sandbox/process_jail.hpp"

#include "sandbox/process/guest_session.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/guest_procs.hpp"
#include "tests/support/time_scale.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::ProcessJail;
using sojourn::sandbox::ProcessJailOptions;
using sojourn::sandbox::RunInput;
using sojourn::test::live_children_of;
using sojourn::test::namespace_id;

constexpr std::uint64_t kMemory = 16u << 20;

Limits limits(std::uint64_t cpu = 10'000'000, std::uint64_t memory = kMemory, std::uint32_t wall_ms = 5000) {
  return Limits{cpu, memory, wall_ms};
}

ProcessJail& jail() {
  static std::unique_ptr<ProcessJail> instance = [] {
    auto started = ProcessJail::start(ProcessJailOptions{});
    REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
    return std::move(*started);
  }();
  return *instance;
}

Result<Value> run(std::string_view source, Limits l = limits(), Value args = {}, HostCalls* host = nullptr) {
  RunInput input;
  input.source = source;
  input.args = std::move(args);
  input.limits = l;
  return jail().run(input, host);
}

void check_error(const Result<Value>& r, Errc code, const std::string& message) {
  REQUIRE_FALSE(r.ok());
  CHECK(sojourn::errc_name(r.error().code) == sojourn::errc_name(code));
  CHECK(r.error().message == message);
}

class EchoHost : public HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    ++calls;
    if (service == "echo") return args;
    if (service == "throw") throw std::runtime_error("boom");
    return sojourn::make_error(Errc::no_such_service, "no such service: " + std::string(service));
  }
  std::atomic<int> calls{0};
};

}  // namespace

TEST_CASE("where a container answers clone3 with ENOSYS, the zygote forks its guests with clone") {
  // First in the file, so that the process forks before any jail has started a thread.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int status = 1;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);  // Docker's default answer to clone3
    if (ctx != nullptr && seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0) == 0 &&
        seccomp_load(ctx) == 0) {
      auto started = ProcessJail::start(ProcessJailOptions{});
      RunInput input;
      input.source = "return 40 + 2";
      input.limits = limits();
      auto r = started ? (*started)->run(input, nullptr) : Result<Value>(started.error());
      status = r.ok() && r->get(1).as_integer() == 42 ? 0 : 2;
    }
    ::_exit(status);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a chunk runs in a guest and its results come back") {
  auto r = run("local a, b = ... return a + b, 'x', {k = {1, 2}}", limits(), Value::array({2, 3}));
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->get(1).as_integer() == 5);
  CHECK(r->get(2).as_string() == "x");
  CHECK(r->get(3).get("k").get(2).as_integer() == 2);
}

TEST_CASE("the jail reports its zygote and the namespaces its guests get") {
  auto status = jail().status();
  CHECK(status.zygote_pid > 0);
  CHECK(status.zygote_starts == 1);
  CHECK(status.guest_path.find("sojourn-guest") != std::string::npos);
  MESSAGE("namespaces: '" << status.namespaces << "' fallback: '" << status.namespace_fallback << "'");
}

namespace {

// The inodes of the user namespaces above PID's own, parent first (as far as this process
// may look).
std::vector<std::uint64_t> user_namespace_ancestors(pid_t pid) {
  std::vector<std::uint64_t> out;
  int fd = ::open(("/proc/" + std::to_string(pid) + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC);
  while (fd >= 0) {
    const int parent = ::ioctl(fd, NS_GET_PARENT);
    ::close(fd);
    fd = parent;
    struct stat st{};
    if (fd >= 0 && ::fstat(fd, &st) == 0) out.push_back(st.st_ino);
  }
  return out;
}

// The inode of the user namespace that owns PID's network namespace (whose capabilities
// rule it). 0 when unknown.
std::uint64_t net_namespace_owner(pid_t pid) {
  const int net = ::open(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC);
  if (net < 0) return 0;
  const int owner = ::ioctl(net, NS_GET_USERNS);
  ::close(net);
  struct stat st{};
  const bool known = owner >= 0 && ::fstat(owner, &st) == 0;
  if (owner >= 0) ::close(owner);
  return known ? st.st_ino : 0;
}

}  // namespace

TEST_CASE("guests share one empty network namespace, not the host's, and have their own pid, ipc, mount and user ones") {
  const auto status = jail().status();
  REQUIRE(status.namespace_fallback.empty());  // this machine allows every namespace
  CHECK(status.namespaces == "user net(shared) mount pid ipc");
  // Two guests alive at once: two runs that spin until their wall-clock deadline.
  std::vector<std::thread> spinners;
  for (int i = 0; i < 2; ++i) {
    spinners.emplace_back([] { (void)run("while true do end", limits(1'000'000'000'000, kMemory, 1500)); });
  }
  const pid_t zygote = jail().status().zygote_pid;
  // The same two or more guests alive in two looks 50 ms apart: the spinners, not the guests
  // of earlier tests that were killed and are being reaped.
  std::vector<pid_t> guests;
  std::vector<pid_t> before;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < give_up) {
    guests = live_children_of(zygote);
    if (guests.size() >= 2 && guests == before) break;
    before = guests;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE(guests.size() >= 2);
  const pid_t a = guests[0];
  const pid_t b = guests[1];
  // The zygote's own network namespace is the one it made for its guests.
  REQUIRE(namespace_id(zygote, "net") != 0);
  CHECK(namespace_id(zygote, "net") != namespace_id(::getpid(), "net"));
  if (namespace_id(a, "net") == 0 && ::geteuid() != 0) {
    // A guest is not dumpable and its memory belongs to the node's user namespace: only
    // CAP_SYS_PTRACE there may look into it (root in CI, where this runs in full).
    MESSAGE("not root: a guest's /proc/PID/ns cannot be read, only the zygote's was checked");
    for (auto& t : spinners) t.join();
    return;
  }
  REQUIRE(namespace_id(a, "net") != 0);
  CHECK(namespace_id(a, "net") == namespace_id(b, "net"));
  CHECK(namespace_id(a, "net") == namespace_id(zygote, "net"));
  CHECK(namespace_id(a, "net") != namespace_id(::getpid(), "net"));
  for (const char* kind : {"pid", "ipc", "mnt", "user"}) {
    CAPTURE(kind);
    CHECK(namespace_id(a, kind) != namespace_id(b, kind));
    CHECK(namespace_id(a, kind) != namespace_id(zygote, kind));
  }
  // No guest holds a capability over the shared namespace: its owner is a strict ancestor of
  // each guest's user namespace (capabilities never reach up a user namespace).
  const std::uint64_t owner = net_namespace_owner(a);
  REQUIRE(owner != 0);
  for (pid_t guest : {a, b}) {
    CHECK(owner != namespace_id(guest, "user"));
    const std::vector<std::uint64_t> above = user_namespace_ancestors(guest);
    CHECK(std::find(above.begin(), above.end(), owner) != above.end());
  }
  for (auto& t : spinners) t.join();
}

TEST_CASE("node.call crosses the channel to the host and back") {
  EchoHost host;
  auto r = run("local e = node.call('echo', 1, 'a', {k = true}) return e[2], e[3].k", limits(), {}, &host);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->get(1).as_string() == "a");
  CHECK(r->get(2).as_bool());
  check_error(run("local x = 1\nlocal y = node.call('missing', 1)", limits(), {}, &host), Errc::lua_error,
              "Lua error at eval:2: no such service: missing");
  check_error(run("local y = node.call('throw')", limits(), {}, &host), Errc::lua_error,
              "Lua error at eval:1: service throw failed: boom");
  check_error(run("local r = node.call('x')"), Errc::lua_error, "Lua error at eval:1: node.call is not available here");
}

TEST_CASE("an infinite loop ends with cpu_limit, like at the trusted level") {
  check_error(run("while true do end", limits(100000)), Errc::cpu_limit, "CPU limit of 100000 instructions exceeded");
}

TEST_CASE("a memory bomb ends with memory_limit") {
  check_error(run("local s = 'x' while true do s = s .. s end", limits(1'000'000'000, 8u << 20)), Errc::memory_limit,
              "memory limit of 8388608 bytes exceeded");
}

TEST_CASE("a loop the hook cannot see is killed at the wall-clock deadline") {
  RunInput input;
  input.source = "local n = 0 while true do n = n + 1 end";
  input.limits = limits(1'000'000'000'000, kMemory, 200);
  input.allow_jit = true;  // compiled loops never reach the count hook
  const auto start = std::chrono::steady_clock::now();
  check_error(jail().run(input, nullptr), Errc::deadline, "wall-clock deadline of 200 ms exceeded");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  CHECK(jail().status().guests_killed >= 1);
}

TEST_CASE("runs on several threads at once each get their own guest") {
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        auto r = run("local n = ... x = (x or 0) + n return x * 2", limits(), Value::array({t * 100 + i}));
        if (r.ok() && r->get(1).as_integer() == 2 * (t * 100 + i)) ++good;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(good == 20);
}

TEST_CASE("a dead zygote is restarted on the next run") {
  const int old = jail().status().zygote_pid;
  REQUIRE(old > 0);
  ::kill(old, SIGKILL);
  auto r = run("return 42");  // at once: the spawn may find the old zygote's socket still open
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->get(1).as_integer() == 42);
  CHECK(jail().status().zygote_pid != old);
  CHECK(jail().status().zygote_starts == 2);
}

namespace {

// The test guest: the same runtime with hooks that make a raw syscall or spin in C.
ProcessJail& test_jail() {
  static std::unique_ptr<ProcessJail> instance = [] {
    ProcessJailOptions options;
    options.guest_path = SOJOURN_TEST_GUEST_PATH;
    auto started = ProcessJail::start(options);
    REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
    return std::move(*started);
  }();
  return *instance;
}

Result<Value> run_test_guest(std::string_view source, Limits l = limits()) {
  RunInput input;
  input.source = source;
  input.limits = l;
  return test_jail().run(input, nullptr);
}

}  // namespace

TEST_CASE("a guest that makes a forbidden syscall is killed and the host names the syscall") {
  check_error(run_test_guest("--@syscall open\nreturn 1"), Errc::seccomp_kill,
              "guest killed by seccomp: syscall " + std::to_string(SYS_open));
  check_error(run_test_guest("--@syscall socket\nreturn 1"), Errc::seccomp_kill,
              "guest killed by seccomp: syscall " + std::to_string(SYS_socket));
  check_error(run_test_guest("--@syscall execve\nreturn 1"), Errc::seccomp_kill,
              "guest killed by seccomp: syscall " + std::to_string(SYS_execve));
  check_error(run_test_guest("--@syscall ptrace\nreturn 1"), Errc::seccomp_kill,
              "guest killed by seccomp: syscall " + std::to_string(SYS_ptrace));
  // The jail goes on serving.
  auto r = run_test_guest("return 7");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 7);
}

TEST_CASE("a guest that breaks the protocol, crashes or exits without answering is reported, and the jail goes on") {
  check_error(run_test_guest("--@garbage\nreturn 1"), Errc::guest_crashed, "guest crashed: unexpected frame kind 99 (unknown)");
  check_error(run_test_guest("--@huge\nreturn 1"), Errc::memory_limit, "memory limit of 16777216 bytes exceeded");
  check_error(run_test_guest("--@exit3\nreturn 1"), Errc::guest_crashed,
              "guest crashed: exited with status 3 without an answer");
  check_error(run_test_guest("--@segv\nreturn 1"), Errc::guest_crashed, "guest crashed: killed by signal 11 (SIGSEGV)");
  auto r = run_test_guest("return 8");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 8);
}

TEST_CASE("two guests forked from one zygote have their own stack-protector canaries") {
  // A run without a principal gets a guest of its own, never a reused one.
  auto first = run_test_guest("--@canary\nreturn test_canary()");
  auto second = run_test_guest("--@canary\nreturn test_canary()");
  REQUIRE_MESSAGE(first.ok(), (first.ok() ? "" : first.error().message));
  REQUIRE_MESSAGE(second.ok(), (second.ok() ? "" : second.error().message));
  const std::string a = first->get(1).as_string();
  const std::string b = second->get(1).as_string();
  REQUIRE(a.size() == 16);
  CHECK(a != b);
  CHECK(a.ends_with("00"));  // glibc's zero low byte, kept by the reseed
  CHECK(b.ends_with("00"));
  CHECK(a != std::string(16, '0'));
}

TEST_CASE("the guest's own functions check their canary: an overflowed local buffer ends the guest") {
  // A write that stays inside the buffer returns normally.
  auto fine = run_test_guest("--@canary\ntest_smash(16) return 5");
  REQUIRE_MESSAGE(fine.ok(), (fine.ok() ? "" : fine.error().message));
  CHECK(fine->get(1).as_integer() == 5);
  // Past 16 bytes the canary's copy is overwritten: glibc's __stack_chk_fail writes its
  // "stack smashing detected" line with writev to stderr before abort, and the filter allows
  // neither, so the guest dies by seccomp on that writev (no stderr, no SIGABRT in a guest).
  check_error(run_test_guest("--@canary\ntest_smash(64) return 5"), Errc::seccomp_kill,
              "guest killed by seccomp: syscall " + std::to_string(SYS_writev));
  auto r = run_test_guest("return 9");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 9);
}

TEST_CASE("a C function that ignores the Lua hooks is killed at the deadline") {
  const auto start = std::chrono::steady_clock::now();
  check_error(run_test_guest("--@spin\nreturn 1", limits(1000, kMemory, 100)), Errc::deadline,
              "wall-clock deadline of 100 ms exceeded");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
}

TEST_CASE("the hooks are absent from the real guest") {
  auto r = run("--@syscall open\nreturn 1");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 1);
}

TEST_CASE("the node's abort flag stops a guest with shutting_down") {
  std::atomic<bool> abort{false};
  RunInput input;
  input.source = "while true do end";
  input.limits = limits(1'000'000'000'000, kMemory, 10000);
  input.abort = &abort;
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    abort = true;
  });
  auto r = jail().run(input, nullptr);
  stopper.join();
  check_error(r, Errc::shutting_down, "node is shutting down");
}

TEST_CASE("a guest's exit is classified from the zygote's report") {
  using sojourn::sandbox::channel::Exited;
  using sojourn::sandbox::classify_guest_end;
  const Limits l = limits(100, 1000, 1500);  // RLIMIT_CPU: 2 + 1 = 3 s
  Exited sigsys{1, 10, CLD_KILLED, SIGSYS, 0};
  check_error(classify_guest_end(&sigsys, 41, l), Errc::seccomp_kill, "guest killed by seccomp: syscall 41");
  check_error(classify_guest_end(&sigsys, -1, l), Errc::seccomp_kill, "guest killed by seccomp: syscall unknown");
  Exited cpu{1, 10, CLD_EXITED, sojourn::sandbox::channel::kCpuLimitExitStatus, 1'000'000};
  check_error(classify_guest_end(&cpu, -1, l), Errc::cpu_limit, "CPU limit of 100 instructions exceeded");
  Exited hard_cpu{1, 10, CLD_KILLED, SIGKILL, 3'000'000};
  check_error(classify_guest_end(&hard_cpu, -1, l), Errc::cpu_limit, "CPU limit of 100 instructions exceeded");
  Exited early_kill{1, 10, CLD_KILLED, SIGKILL, 1'000'000};  // someone else's SIGKILL
  check_error(classify_guest_end(&early_kill, -1, l), Errc::guest_crashed, "guest crashed: killed by signal 9 (SIGKILL)");
  Exited segv{1, 10, CLD_DUMPED, SIGSEGV, 1000};
  check_error(classify_guest_end(&segv, -1, l), Errc::guest_crashed, "guest crashed: killed by signal 11 (SIGSEGV)");
  Exited quiet{1, 10, CLD_EXITED, 3, 1000};
  check_error(classify_guest_end(&quiet, -1, l), Errc::guest_crashed,
              "guest crashed: exited with status 3 without an answer");
  check_error(classify_guest_end(nullptr, -1, l), Errc::guest_crashed,
              "guest crashed: the zygote died before reporting how the guest ended");
}

TEST_CASE("the guest binary is found through SOJOURN_GUEST, and a missing one is a clear error") {
  using sojourn::sandbox::find_guest_binary;
  auto missing = find_guest_binary("/nonexistent/sojourn-guest");
  REQUIRE_FALSE(missing.ok());
  CHECK_ERROR(missing, Errc::jail_unavailable, "no guest binary", "/nonexistent/sojourn-guest");
  auto found = find_guest_binary("");
  REQUIRE(found.ok());
  if (const char* env = std::getenv("SOJOURN_GUEST")) CHECK(*found == env);
  auto refused = ProcessJail::start(ProcessJailOptions{"/nonexistent/sojourn-guest"});
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::jail_unavailable);
}

TEST_CASE("without a host, node.call fails as at the trusted level, before its arguments are converted") {
  check_error(run("local r = node.call('echo', 1, {cb = print})"), Errc::lua_error,
              "Lua error at eval:1: node.call is not available here");
}

TEST_CASE("large arguments and results cross the channel intact") {
  const std::string big(10'000'000, 'a');
  auto r = run("local s = ... return #s, s:sub(-3), ('xy'):rep(10e6)", limits(100'000'000, 128u << 20),
               Value::array({big}));
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->get(1).as_integer() == 10'000'000);
  CHECK(r->get(2).as_string() == "aaa");
  CHECK(r->get(3).as_string().size() == 20'000'000);
  CHECK(r->get(3).as_string().substr(19'999'998) == "xy");
}

TEST_CASE("a guest that outlives its CPU-time rlimit is killed by the kernel and reported as cpu_limit") {
  // The host's wall-clock kill is held back, so RLIMIT_CPU (ceil(100 ms) + 1 = 2 s) fires:
  // SIGXCPU, whose handler exits with the status the host recognises.
  ProcessJailOptions options;
  options.guest_path = SOJOURN_TEST_GUEST_PATH;
  // The 2 s are CPU time: on a loaded host they take longer on the wall clock, so the host's
  // kill is held back (and the bound below widened) by the host's load.
  options.kill_grace_ms = test_support::scaled_ms(10'000);
  auto patient = ProcessJail::start(options);
  REQUIRE(patient.ok());
  RunInput input;
  input.source = "--@spin\nreturn 1";
  input.limits = limits(5000, kMemory, 100);
  const auto start = std::chrono::steady_clock::now();
  check_error((*patient)->run(input, nullptr), Errc::cpu_limit, "CPU limit of 5000 instructions exceeded");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(test_support::scaled_ms(8'000)));
  CHECK((*patient)->status().guests_killed == 0);  // the kernel's kill, not the host's
}

TEST_CASE("a jail without namespaces says why, and its guests still run under the filter") {
  ProcessJailOptions options;
  options.guest_path = SOJOURN_TEST_GUEST_PATH;
  options.namespaces = false;
  auto bare = ProcessJail::start(options);
  REQUIRE(bare.ok());
  CHECK((*bare)->status().namespaces.empty());
  CHECK((*bare)->status().namespace_fallback == "namespaces turned off by the node's options");
  RunInput input;
  input.source = "return 6 * 7";
  input.limits = limits();
  auto r = (*bare)->run(input, nullptr);
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 42);
  input.source = "--@syscall socket\nreturn 1";
  check_error((*bare)->run(input, nullptr), Errc::seccomp_kill,
              "guest killed by seccomp: syscall " + std::to_string(SYS_socket));
}
