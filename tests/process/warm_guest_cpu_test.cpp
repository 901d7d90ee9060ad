// Tests of the CPU time of the process jail's warm guests: each step is charged what the host
// measured, each run's CPU-time limit counts from its own start, and a guest that keeps
// running after its answer is not reused.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

#include "sandbox/process/guest_pool.hpp"
#include "sandbox/process/guest_session.hpp"
#include "tests/process/warm_guest_support.hpp"
#include "tests/support/time_scale.hpp"

using namespace warm_test;

namespace {

// The parent pid and the CPU time (user + system, in ms) of /proc/PID/stat; nullopt when gone.
std::optional<std::pair<pid_t, std::uint64_t>> parent_and_cpu_ms(const std::string& pid) {
  std::ifstream in("/proc/" + pid + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 2));
  std::string state;
  long ppid = 0;
  std::string skip;
  fields >> state >> ppid;
  for (int i = 0; i < 9; ++i) fields >> skip;  // pgrp .. cmajflt
  std::uint64_t utime = 0;
  std::uint64_t stime = 0;
  if (!(fields >> utime >> stime)) return std::nullopt;
  return std::pair{static_cast<pid_t>(ppid), (utime + stime) * 1000 / static_cast<std::uint64_t>(::sysconf(_SC_CLK_TCK))};
}

// The CPU time of this process's grandchildren (the zygote's guests), in ms.
std::uint64_t descendants_cpu_ms() {
  std::map<pid_t, std::pair<pid_t, std::uint64_t>> all;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (auto info = parent_and_cpu_ms(name)) all[static_cast<pid_t>(std::stol(name))] = *info;
  }
  std::uint64_t total = 0;
  for (const auto& [pid, info] : all) {
    const auto parent = all.find(info.first);
    if (parent != all.end() && parent->second.first == ::getpid()) total += info.second;
  }
  return total;
}

}  // namespace

TEST_CASE("a guest that keeps running after its answer is not reused") {
  auto jail = start(1, /*test_guest=*/true);
  CHECK(first_integer(run(*jail, "signer a", "--@spin-after-answer\nreturn 1")) == 1);
  // Until it spent more CPU since its answer than a reset takes (on a loaded machine a fixed
  // sleep may give it too little). Its principal's next run must not wait for a guest that
  // never went back to waiting.
  const std::uint64_t spun_from = descendants_cpu_ms();
  for (int i = 0; i < 200 && descendants_cpu_ms() < spun_from + 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK(descendants_cpu_ms() >= spun_from + 100);
  const auto begin = std::chrono::steady_clock::now();
  CHECK(first_integer(run(*jail, "signer a", "return 2", limits(2000))) == 2);
  // Broken, it would wait for that guest until the run's 2 s wall limit: the bound stays below.
  const double bound_ms = test_support::slack_bound_ms(500, 1000, 1900);
  CHECK(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin).count() < bound_ms);
}

TEST_CASE("a warm guest's CPU-time rlimit counts from each run, not from its first") {
  auto jail = start(1);
  // Each run burns well under its budget; together they would pass a limit set once.
  const std::string burn = "local x = 0 for i = 1, 3e6 do x = x + i end return 1";
  RunInput input;
  for (int i = 0; i < 4; ++i) {
    Result<Value> r = run(*jail, "signer a", burn, Limits{100'000'000, kMemory, 1000});
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  }
  CHECK(jail->status().guests_reused >= 3);
}

TEST_CASE("every agent step in a warm guest is charged the CPU the host measured, the first of a new guest too") {
  // A step the guest runs in one slice, from its read of the request to its answer, leaves
  // the kernel's process CPU clock where it was until the guest leaves its CPU: read too soon
  // it measured nothing, and the step was charged only what the guest counted.
  auto jail = start(2);
  RunInput input;
  input.source = "function start(state) local x = 0 for i = 1, 30000 do x = x + i end return x end";
  input.limits = limits();
  for (int i = 0; i < 12; ++i) {
    const std::string principal = "signer " + std::to_string(i % 3 == 0 ? i : 0);  // every third new: a new guest
    input.principal = principal;  // a view: the string lives through the step
    Result<sojourn::sandbox::AgentOutcome> step = jail->run_agent(input, {"start", Value::table(), Value::table()}, nullptr);
    REQUIRE_MESSAGE(step.ok(), (step.ok() ? "" : step.error().message));
    CHECK_MESSAGE(step->host_cpu_us > 0, "step " << i << " of " << input.principal);
  }
}

namespace {

// A stand-in for a warm guest's CPU-time limits: a child that sets its own RLIMIT_CPU as a
// guest does (hard one second over soft), leaves SIGXCPU's default action (the kill), and on
// each byte from `commands` spins for that many tenths of a second of its own CPU time
// (255: until the kernel stops it), then answers with a byte on `answers`.
pid_t spawn_cpu_guest(int commands, int answers) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  const rlimit own{600, 601};
  if (::setrlimit(RLIMIT_CPU, &own) != 0) ::_exit(2);
  ::signal(SIGXCPU, SIG_DFL);
  const auto cpu_ms = [] {
    timespec t{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1'000'000;
  };
  unsigned char tenths = 0;
  while (::read(commands, &tenths, 1) == 1) {
    const long until = tenths == 255 ? -1 : cpu_ms() + tenths * 100L;
    volatile unsigned long spin = 0;
    while (until < 0 || cpu_ms() < until) ++spin;
    if (::write(answers, &tenths, 1) != 1) ::_exit(3);
  }
  ::_exit(0);
}

std::uint64_t soft_cpu_limit(pid_t pid) {
  rlimit current{};
  REQUIRE(::prlimit(pid, RLIMIT_CPU, nullptr, &current) == 0);
  return current.rlim_cur;
}

}  // namespace

TEST_CASE("a warm guest's CPU limit is re-armed as its CPU time moves, and one spinning past it on a later reuse is killed") {
  using sojourn::sandbox::WarmGuest;
  int commands[2];
  int answers[2];
  REQUIRE(::pipe(commands) == 0);
  REQUIRE(::pipe(answers) == 0);
  const pid_t pid = spawn_cpu_guest(commands[0], answers[1]);
  REQUIRE(pid > 0);
  ::close(commands[0]);
  ::close(answers[1]);
  WarmGuest warm;
  warm.guest.pid = pid;
  sojourn::sandbox::watch_guest(warm);
  REQUIRE(warm.has_cpu_clock);
  const Limits run_limits{1'000'000, kMemory, 1};  // a budget of guest_cpu_seconds: 2 s
  const auto expected_soft = [&] {
    const std::optional<std::uint64_t> used = sojourn::sandbox::guest_cpu_time_us(warm);
    REQUIRE(used);
    return (*used + 999'999) / 1'000'000 + 2;
  };
  // Its own limits are set once the child ran: the hard limit is read, the soft one armed.
  unsigned char tenths = 1;
  REQUIRE(::write(commands[1], &tenths, 1) == 1);
  REQUIRE(::read(answers[0], &tenths, 1) == 1);
  REQUIRE(sojourn::sandbox::arm_cpu_limit(warm, run_limits));
  CHECK(warm.hard_cpu_seconds == 601);
  CHECK(soft_cpu_limit(pid) == expected_soft());
  // Reuses whose budget ends at the same whole second leave the armed limit as it is.
  for (int reuse = 0; reuse < 3; ++reuse) {
    warm.rest_cpu_us.reset();
    REQUIRE(sojourn::sandbox::arm_cpu_limit(warm, run_limits));
    CHECK(soft_cpu_limit(pid) == expected_soft());
  }
  // A run that used more than a second moves the next run's limit with it.
  tenths = 12;
  REQUIRE(::write(commands[1], &tenths, 1) == 1);
  REQUIRE(::read(answers[0], &tenths, 1) == 1);
  warm.rest_cpu_us.reset();
  REQUIRE(sojourn::sandbox::arm_cpu_limit(warm, run_limits));
  const std::uint64_t armed = soft_cpu_limit(pid);
  CHECK(armed == expected_soft());
  CHECK(armed >= 4);
  // This reuse spins past its budget: the kernel's SIGXCPU at the armed soft limit ends it.
  tenths = 255;
  REQUIRE(::write(commands[1], &tenths, 1) == 1);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGXCPU);
  ::close(commands[1]);
  ::close(answers[0]);
}

