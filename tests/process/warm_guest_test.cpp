// Tests of the process jail's warm guests: a principal's runs reuse its guests, nothing a
// run leaves behind reaches the next, principals never share a guest, a guest killed by a
// limit is never reused, and the pool refills in the background.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "sandbox/process/guest_pool.hpp"
#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/host_channel.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "sojourn/sandbox/process_jail.hpp"
#include "tests/support/time_scale.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::ProcessJail;
using sojourn::sandbox::ProcessJailOptions;
using sojourn::sandbox::RunInput;

constexpr std::uint64_t kMemory = 16u << 20;

Limits limits(std::uint32_t wall_ms = 5000) { return Limits{10'000'000, kMemory, wall_ms}; }

std::unique_ptr<ProcessJail> start(std::uint32_t warm_guests, bool test_guest = false) {
  ProcessJailOptions options;
  options.warm_guests = warm_guests;
  if (test_guest) options.guest_path = SOJOURN_TEST_GUEST_PATH;
  auto started = ProcessJail::start(options);
  REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
  return std::move(*started);
}

Result<Value> run(ProcessJail& jail, std::string_view principal, std::string_view source, Limits l = limits()) {
  RunInput input;
  input.source = source;
  input.limits = l;
  input.principal = principal;
  return jail.run(input, nullptr);
}

std::int64_t first_integer(const Result<Value>& r) {
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return r->get(1).as_integer();
}

// Waits (up to 10 s) until the jail has `n` idle warm guests.
bool wait_for_warm(const ProcessJail& jail, std::uint64_t n) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (jail.status().guests_warm < n) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// run_if_warm until a warm guest served it (up to 10 s): one just forked is passed over
// while it still sets its own limits.
std::optional<Result<Value>> run_when_warm(ProcessJail& jail, const RunInput& input) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    std::optional<Result<Value>> r = jail.run_if_warm(input, nullptr, 20);
    if (r || std::chrono::steady_clock::now() > until) return r;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace

TEST_CASE("a principal's later runs are served by a warm guest, without a fork on their path") {
  auto jail = start(2);
  CHECK(first_integer(run(*jail, "signer a", "return 1")) == 1);
  REQUIRE(wait_for_warm(*jail, 2));
  const auto started = jail->status().guests_started;
  for (int i = 0; i < 5; ++i) CHECK(first_integer(run(*jail, "signer a", "return 2 + " + std::to_string(i))) == 2 + i);
  const auto status = jail->status();
  CHECK(status.guests_reused == 5);
  CHECK(status.guests_started == started);  // every one of the five ran in a guest forked before it
}

TEST_CASE("a global set in one run is absent in the next run of the same principal") {
  auto jail = start(1);
  CHECK(first_integer(run(*jail, "signer a", "leaked = 42 string.leaked = 7 return 1")) == 1);
  Result<Value> second = run(*jail, "signer a", "return leaked == nil and string.leaked == nil, collectgarbage('count')");
  REQUIRE(second.ok());
  CHECK(jail->status().guests_reused == 1);  // the second run did run in the first one's guest
  CHECK(second->get(1).as_bool());
}

TEST_CASE("a warm guest never serves another principal, and code of no known principal never reuses one") {
  auto jail = start(2);
  CHECK(first_integer(run(*jail, "signer a", "return 1")) == 1);
  REQUIRE(wait_for_warm(*jail, 2));
  CHECK(first_integer(run(*jail, "signer b", "return 1")) == 1);
  CHECK(first_integer(run(*jail, "anonymous", "return 1")) == 1);
  CHECK(first_integer(run(*jail, "", "return 1")) == 1);
  CHECK(first_integer(run(*jail, "", "return 1")) == 1);
  CHECK(jail->status().guests_reused == 0);  // a's idle guests were there, and none was taken
  CHECK(first_integer(run(*jail, "signer b", "return 1")) == 1);
  CHECK(jail->status().guests_reused == 1);
}

TEST_CASE("a guest killed by a limit is not reused, and the pool refills in its place") {
  auto jail = start(1, /*test_guest=*/true);
  CHECK(first_integer(run(*jail, "signer a", "return 1")) == 1);
  REQUIRE(wait_for_warm(*jail, 1));
  const auto started = jail->status().guests_started;
  // A C loop no Lua hook sees: the host kills the warm guest at the deadline.
  Result<Value> spin = run(*jail, "signer a", "--@spin\nreturn 1", limits(100));
  REQUIRE_FALSE(spin.ok());
  CHECK(spin.error().code == Errc::deadline);
  CHECK(jail->status().guests_killed == 1);
  CHECK(jail->status().guests_reused == 1);
  REQUIRE(wait_for_warm(*jail, 1));
  CHECK(jail->status().guests_started == started + 1);  // a new guest, forked off the request path
  CHECK(jail->status().guests_refilled >= 1);
  CHECK(first_integer(run(*jail, "signer a", "return 3")) == 3);
  CHECK(jail->status().guests_reused == 2);
}

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

TEST_CASE("a guest whose run left it large is not kept warm") {
  auto jail = start(1);
  const Limits big{100'000'000, 128u << 20, 5000};
  // About 48 MB of live strings at the answer: the arena's pages would stay resident.
  Result<Value> grew = run(*jail, "signer a", "local t = {} for i = 1, 48 do t[i] = string.rep('x', 1048576 - 64) .. i end return #t", big);
  REQUIRE_MESSAGE(grew.ok(), (grew.ok() ? "" : grew.error().message));
  // Its guest was discarded, so the pool forked another in its place (a kept one would have
  // been the key's one guest, and nothing would have been refilled).
  REQUIRE(wait_for_warm(*jail, 1));
  CHECK(jail->status().guests_refilled == 1);
  CHECK(jail->status().guests_started == 2);
  // A small run's guest is kept.
  CHECK(first_integer(run(*jail, "signer a", "return 1", big)) == 1);
  CHECK(first_integer(run(*jail, "signer a", "return 1", big)) == 1);
  CHECK(jail->status().guests_reused == 2);
  CHECK(jail->status().guests_started == 2);
}

TEST_CASE("run_if_warm serves only an idle warm guest of the run's own principal and never forks") {
  auto jail = start(1, /*test_guest=*/true);
  RunInput input;
  input.source = "return 5";
  input.limits = limits();
  input.principal = "signer a";
  // Nothing idle yet: no answer, and no guest forked on this path (a refill is asked for).
  CHECK_FALSE(jail->run_if_warm(input, nullptr, 20).has_value());
  CHECK(jail->status().guests_reused == 0);
  REQUIRE(wait_for_warm(*jail, 1));
  input.principal = "signer b";
  CHECK_FALSE(jail->run_if_warm(input, nullptr, 20).has_value());  // a's guest is not b's
  CHECK(jail->status().guests_reused == 0);
  input.principal = "";
  CHECK_FALSE(jail->run_if_warm(input, nullptr, 20).has_value());  // nobody's guest is reused
  input.principal = "signer a";
  std::optional<Result<Value>> five = run_when_warm(*jail, input);
  REQUIRE(five.has_value());
  CHECK(first_integer(*five) == 5);
  CHECK(jail->status().guests_reused == 1);
  // A C loop no Lua hook sees: killed at its deadline plus the short grace, never reused.
  REQUIRE(wait_for_warm(*jail, 1));
  input.source = "--@spin\nreturn 1";
  input.limits = limits(50);
  std::optional<Result<Value>> spin = run_when_warm(*jail, input);
  REQUIRE(spin.has_value());
  REQUIRE_FALSE(spin->ok());
  CHECK(spin->error().code == Errc::deadline);
  CHECK(jail->status().guests_killed == 1);
  REQUIRE(wait_for_warm(*jail, 2));  // a's refilled guest and b's
  input.source = "return 6";
  input.limits = limits();
  std::optional<Result<Value>> six = run_when_warm(*jail, input);
  REQUIRE(six.has_value());
  CHECK(first_integer(*six) == 6);
}

namespace {

// What a run can see of what earlier runs left, as one string (addresses left out: a fresh
// state's tables are elsewhere).
constexpr std::string_view kProbe = R"(
  local seen = {}
  local function add(v) seen[#seen + 1] = tostring(v) end
  add(leaked) add(rawget(string, 'leaked')) add(('a'):upper()) add(type(table.insert))
  add(math.pi) add(type(getmetatable(_G))) add(type(keep)) add(type(big)) add(type(pad)) add(type(co)) add(debug)
  add(type(getmetatable('').__index)) add(rawget(getmetatable('').__index, 'leaked'))
  add(select('#', pcall(error))) add(getfenv) add(registry_stash)
  add(collectgarbage('count'))
  return table.concat(seen, ',')
)";

std::string probe(ProcessJail& jail) {
  Result<Value> r = run(jail, "signer a", kProbe);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return r->get(1).as_string();
}

}  // namespace

TEST_CASE("nothing a run leaves in a warm guest's prepared state reaches the next run of its principal") {
  auto jail = start(1);
  const std::string before = probe(*jail);
  // Globals, the library tables, the string metatable's __index, the globals' metatable, an
  // upvalue, a suspended coroutine, a grown heap, and the registry if it were reachable.
  Result<Value> polluted = run(*jail, "signer a", R"(
    leaked = 42
    string.leaked = 7
    getmetatable('').__index.upper = function() return 'pwned' end
    getmetatable('').__index.leaked = 'via the metatable'
    table.insert = nil
    math.pi = 3
    local secret = 'an upvalue'
    keep = function() return secret end
    big = {} for i = 1, 100000 do big[i] = i end
    pad = string.rep('x', 4 * 1024 * 1024)
    co = coroutine.create(function() coroutine.yield() end) coroutine.resume(co)
    if debug then debug.getregistry().registry_stash = 'stashed' end
    setmetatable(_G, {__index = function() return 'from a metatable' end})
    return ('a'):upper(), leaked, collectgarbage('count') > 4096
  )");
  REQUIRE_MESSAGE(polluted.ok(), (polluted.ok() ? "" : polluted.error().message));
  CHECK(polluted->get(1).as_string() == "pwned");  // the changes were made, in that run
  CHECK(polluted->get(3).as_bool());
  const std::string after = probe(*jail);
  CHECK(after == before);  // the same state, byte for byte: even its memory count is the same
  CHECK(after.find("pwned") == std::string::npos);
  CHECK(jail->status().guests_reused == 2);  // all three runs in one guest
  // An error and a kill in between change nothing either.
  CHECK_FALSE(run(*jail, "signer a", "leaked = 1 error('boom')").ok());
  CHECK_FALSE(run(*jail, "signer a", "leaked = 1 while true do end", Limits{100'000, kMemory, 5000}).ok());
  CHECK(probe(*jail) == before);
  CHECK(jail->status().guests_reused == 5);
}

TEST_CASE("a warm guest's runs end with the results, errors and limits of a fresh state's") {
  auto jail = start(1);
  struct Case {
    std::string source;
    Limits limits;
  };
  const Limits small_cpu{100'000, kMemory, 5000};
  const Limits short_wall{1'000'000'000, kMemory, 50};
  const Case cases[] = {
      {"return string.rep('ab', 3), 1.5, nil, true", limits()},
      {"error('boom')", limits()},
      {"error({})", limits()},
      {"error(42)", limits()},
      {"return +", limits()},
      {"local s = 'x' for i = 1, 40 do s = s .. s end return #s", limits()},
      {"local t = {} for i = 1, 1e8 do t[i] = i end", limits()},
      {"while true do end", small_cpu},
      {"return pcall(function() while true do end end)", small_cpu},
      {"while true do end", short_wall},
      {"return string.rep('x', 1e9)", limits()},
      {"return node.call('kv.get', 'k')", limits()},
      {"return tostring(load), 0, nil, false", limits()},
      {"\x1bLua", limits()},
      {"return 1LL", limits()},
  };
  for (const Case& c : cases) {
    CAPTURE(c.source);
    RunInput input;
    input.source = c.source;
    input.limits = c.limits;
    const Result<Value> fresh = sojourn::sandbox::run_lua(input, nullptr);
    const Result<Value> warm = run(*jail, "signer a", c.source, c.limits);
    REQUIRE(warm.ok() == fresh.ok());
    if (fresh.ok()) {
      CHECK(warm->get(1).as_string() == fresh->get(1).as_string());
      CHECK(warm->get(2).as_number() == fresh->get(2).as_number());
      CHECK(warm->get(4).as_bool() == fresh->get(4).as_bool());
    } else {
      CHECK(warm.error().code == fresh.error().code);
      CHECK(warm.error().message == fresh.error().message);
    }
    // The guest goes on serving (unless the host killed it) from an unchanged state.
    CHECK(first_integer(run(*jail, "signer a", "return 7")) == 7);
  }
}

TEST_CASE("an agent step in a warm guest sets its prepared state aside, and the next run has it again, unchanged") {
  auto jail = start(1);
  const std::string before = probe(*jail);
  RunInput input;
  input.source = "leaked = 'by the agent' function start(state) state.n = (state.n or 0) + 1 return state.n end";
  input.limits = limits();
  input.principal = "signer a";
  Value state = Value::table();
  state.set("n", 4);
  Result<sojourn::sandbox::AgentOutcome> step = jail->run_agent(input, {"start", state, Value::table()}, nullptr);
  REQUIRE_MESSAGE(step.ok(), (step.ok() ? "" : step.error().message));
  CHECK(step->results.get(1).as_integer() == 5);
  CHECK(probe(*jail) == before);
  CHECK(probe(*jail) == before);
  CHECK(jail->status().guests_reused == 3);  // the step and both probes in the first probe's guest
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

TEST_CASE("a warm guest's timed-receive channel reads frames, and gives up at its deadline or on abort while the guest is silent") {
  using sojourn::sandbox::ChannelStatus;
  using sojourn::sandbox::ChannelWaits;
  using sojourn::sandbox::HostChannel;
  using sojourn::sandbox::UniqueFd;
  namespace channel = sojourn::sandbox::channel;
  const auto pair = [] {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    REQUIRE(sojourn::sandbox::prepare_timed_receive(fds[0]));
    return std::pair{UniqueFd(fds[0]), UniqueFd(fds[1])};
  };
  const sojourn::sandbox::ReadLimits limits{1024, channel::Kind::run_done, 1024};
  channel::Kind kind{};
  std::vector<std::uint8_t> payload;
  {
    auto [host_end, guest_end] = pair();
    const auto frame = channel::frame_header(channel::Kind::run_done, 3);
    const std::uint8_t bytes[] = {1, 2, 3};
    HostChannel host(std::move(host_end), HostChannel::Clock::now() + std::chrono::seconds(5), nullptr,
                     ChannelWaits::timed_receive);
    // The frame arrives in two writes, the second after the host started waiting.
    REQUIRE(::write(guest_end.get(), frame.data(), frame.size()) == static_cast<ssize_t>(frame.size()));
    std::thread late([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      (void)::write(guest_end.get(), bytes, sizeof bytes);
    });
    CHECK(host.read(kind, payload, limits) == ChannelStatus::ok);
    late.join();
    CHECK(kind == channel::Kind::run_done);
    CHECK(payload == std::vector<std::uint8_t>{1, 2, 3});
    CHECK(host.release().valid());
  }
  {
    auto [host_end, guest_end] = pair();
    const auto begin = std::chrono::steady_clock::now();
    HostChannel host(std::move(host_end), begin + std::chrono::milliseconds(30), nullptr, ChannelWaits::timed_receive);
    CHECK(host.read(kind, payload, limits) == ChannelStatus::deadline);
    CHECK(std::chrono::steady_clock::now() - begin >= std::chrono::milliseconds(30));
  }
  {
    auto [host_end, guest_end] = pair();
    std::atomic<bool> abort{false};
    HostChannel host(std::move(host_end), HostChannel::Clock::now() + std::chrono::seconds(30), &abort,
                     ChannelWaits::timed_receive);
    std::thread aborter([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      abort.store(true);
    });
    CHECK(host.read(kind, payload, limits) == ChannelStatus::aborted);
    aborter.join();
  }
  {
    auto [host_end, guest_end] = pair();
    HostChannel host(std::move(host_end), HostChannel::Clock::now() + std::chrono::seconds(5), nullptr,
                     ChannelWaits::timed_receive);
    guest_end.reset();
    CHECK(host.read(kind, payload, limits) == ChannelStatus::closed);
  }
}

namespace {

// A host with an in-memory kv.get / kv.put whose kv.get answers may be carried (unless
// forbidden, as a policy that does not grant it would say), counting what crosses and what
// the guest says it used.
class CarryHost final : public sojourn::sandbox::HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    ++crossed[std::string(service)];
    if (service == "kv.get") {
      if (forbidden) return sojourn::make_error(Errc::service_not_granted, "service kv.get is not granted");
      return Value(store[args.get(1).as_string()]);
    }
    if (service == "kv.put") {
      store[args.get(1).as_string()] = args.get(2).as_integer();
      return Value{};
    }
    return sojourn::make_error(Errc::no_such_service, "no such service");
  }
  bool carries(std::string_view service) const override { return service == "kv.get" && !forbidden; }
  std::optional<Value> read_ahead(std::string_view service, const Value& args) override {
    if (!carries(service)) return std::nullopt;
    ++read_ahead_calls;
    return Value(store[args.get(1).as_string()]);
  }
  void carried_used(std::string_view service, const Value& args) override {
    used.push_back(std::string(service) + " " + args.get(1).as_string());
  }

  std::map<std::string, std::int64_t> store;
  std::map<std::string, int> crossed;
  std::vector<std::string> used;
  int read_ahead_calls = 0;
  bool forbidden = false;
};

Result<Value> run_with(ProcessJail& jail, sojourn::sandbox::HostCalls& host, std::string_view source) {
  RunInput input;
  input.source = source;
  input.limits = limits();
  input.principal = "signer a";
  return jail.run(input, &host);
}

}  // namespace

TEST_CASE("a warm guest's later runs get a read-only call's answer at their start without crossing, counted as used") {
  auto jail = start(1);
  CarryHost host;
  host.store["k"] = 1;
  const std::string chunk = "local v = node.call('kv.get', 'k') return v + 1";
  CHECK(first_integer(run_with(*jail, host, chunk)) == 2);
  CHECK(host.crossed["kv.get"] == 1);  // nothing learned yet: it crossed
  CHECK(host.used.empty());
  for (std::int64_t value = 10; value < 13; ++value) {
    host.store["k"] = value;  // the answer carried is the store's at the run's start
    CHECK(first_integer(run_with(*jail, host, chunk)) == value + 1);
  }
  CHECK(jail->status().guests_reused == 3);
  CHECK(host.crossed["kv.get"] == 1);  // the three later runs were answered from their request
  CHECK(host.read_ahead_calls == 3);
  CHECK(host.used == std::vector<std::string>{"kv.get k", "kv.get k", "kv.get k"});
  // Another key than the one carried crosses, and gets the store's value.
  host.store["j"] = 7;
  CHECK(first_integer(run_with(*jail, host, "local a = node.call('kv.get', 'k') local b = node.call('kv.get', 'j') return a + b")) == 19);
  CHECK(host.crossed["kv.get"] == 3);
}

TEST_CASE("a chunk that writes then reads sees its write, not the value carried from its start") {
  auto jail = start(1);
  CarryHost host;
  const std::string chunk = "local before = node.call('kv.get', 'k') node.call('kv.put', 'k', before + 10) "
                            "return node.call('kv.get', 'k'), before";
  host.store["k"] = 1;
  Result<Value> first = run_with(*jail, host, chunk);
  REQUIRE(first.ok());
  CHECK(first->get(1).as_integer() == 11);
  host.store["k"] = 5;
  Result<Value> second = run_with(*jail, host, chunk);
  REQUIRE(second.ok());
  CHECK(second->get(2).as_integer() == 5);   // the first read: carried
  CHECK(second->get(1).as_integer() == 15);  // after the write: asked of the host, its new value
  CHECK(host.used == std::vector<std::string>{"kv.get k"});
  CHECK(host.crossed["kv.get"] == 3);  // the first run's two, the second's read after its write
}

TEST_CASE("a read the host does not carry (a policy refusal) is asked for at each call and gets its refusal") {
  auto jail = start(1);
  CarryHost host;
  const std::string chunk = "local v = node.call('kv.get', 'k') return v";
  CHECK(first_integer(run_with(*jail, host, chunk)) == 0);  // learned
  host.forbidden = true;
  for (int i = 0; i < 2; ++i) {
    Result<Value> r = run_with(*jail, host, chunk);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("not granted") != std::string::npos);
  }
  CHECK(host.read_ahead_calls == 0);
  CHECK(host.used.empty());
  CHECK(host.crossed["kv.get"] == 3);
}

TEST_CASE("a guest that lies about the carried reads it used is killed and counted nothing; the jail serves on") {
  auto jail = start(1, /*test_guest=*/true);
  CarryHost host;
  host.store["k"] = 4;
  const std::string chunk = "--@lie-used\nreturn node.call('kv.get', 'k')";
  CHECK(first_integer(run_with(*jail, host, chunk)) == 4);  // nothing carried yet: no lie
  Result<Value> lied = run_with(*jail, host, chunk);
  REQUIRE_FALSE(lied.ok());
  CHECK(lied.error().code == Errc::guest_crashed);
  CHECK(host.used.empty());
  CHECK(first_integer(run_with(*jail, host, "return node.call('kv.get', 'k')")) == 4);
}
