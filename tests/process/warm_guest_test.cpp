// Tests of the process jail's warm guests: a principal's runs reuse its guests, nothing a
// run leaves behind reaches the next, principals never share a guest, a guest killed by a
// limit is never reused, and the pool refills in the background. Their CPU accounting is in
// warm_guest_cpu_test.cpp, their carried reads in warm_guest_carry_test.cpp.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/host_channel.hpp"
#include "tests/process/warm_guest_support.hpp"

using namespace warm_test;

namespace {

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
  // The first run may find the pool's guest still setting its own limits and take another
  // way (run_if_warm does not wait for it): the runs after it are counted from here.
  const std::uint64_t reused_at_start = jail->status().guests_reused;
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
  CHECK(jail->status().guests_reused == reused_at_start + 2);  // both runs after the first in one guest
  // An error and a kill in between change nothing either.
  CHECK_FALSE(run(*jail, "signer a", "leaked = 1 error('boom')").ok());
  CHECK_FALSE(run(*jail, "signer a", "leaked = 1 while true do end", Limits{100'000, kMemory, 5000}).ok());
  CHECK(probe(*jail) == before);
  CHECK(jail->status().guests_reused == reused_at_start + 5);
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

TEST_CASE("an agent step in a warm guest leaves its prepared state unchanged for the next run") {
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
