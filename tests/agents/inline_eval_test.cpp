// The network-thread fast path (docs/bench.md): small unsigned evaluations at `trusted`, or at
// `process` in a warm guest already waiting, run on the network thread; anything past the
// inline budgets or calling a service other than kv.get, kv.keys and node.info gives way to
// the worker path, with no effect seen twice.
#include <doctest/doctest.h>

#include "sojourn/agents/node_async.hpp"  // first: <utility> before any Asio header

#include <atomic>
#include <chrono>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <thread>
#include <vector>

#include "agents/inline_streak.hpp"
#include "sojourn/agents/node.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;

namespace {

struct TrustedServer {
  Node server;
  Node client{NodeOptions{.name = "client"}};
  std::string address;
  explicit TrustedServer(std::uint64_t inline_instructions = 20'000) : server(options(inline_instructions)) {
    auto bound = server.listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    address = *bound;
  }
  static NodeOptions options(std::uint64_t inline_instructions) {
    NodeOptions o;
    o.name = "server";
    o.peer_isolation = Isolation::trusted;
    o.inline_eval_instructions = inline_instructions;
    return o;
  }
  std::uint64_t inline_count() const { return server.stats().evals_inline; }
};

}  // namespace

TEST_CASE("a tiny evaluation at trusted runs on the network thread and reads the store") {
  TrustedServer n;
  REQUIRE(n.client.call(n.address, "kv.put", Value::array({"k", 41})).ok());
  auto r = n.client.eval(n.address, "return node.call('kv.get', 'k') + 1, node.call('node.info').name, #node.call('kv.keys')");
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_integer() == 42);
  CHECK(r->results.get(2).as_string() == "server");
  CHECK(r->results.get(3).as_integer() == 1);
  CHECK(r->isolation == Isolation::trusted);
  CHECK(n.inline_count() == 1);
  CHECK(n.server.stats().evals_served == 1);
}

TEST_CASE("a loop past the inline budget gives way to a worker and returns the right result") {
  TrustedServer n;
  auto r = n.client.eval(n.address, "local s = 0 for i = 1, 200000 do s = s + i end return s");
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_integer() == 20000100000LL);
  CHECK(n.inline_count() == 0);
  CHECK(n.server.stats().evals_served == 1);
}

TEST_CASE("an evaluation that writes gives way before the write, and the write happens once") {
  TrustedServer n;
  std::atomic<int> bumps{0};
  n.server.register_service("count.bump", [&bumps](const Value&) -> Result<Value> { return Value(++bumps); });
  // The reads before the write ran inline first; the whole chunk then ran again on a worker.
  auto r = n.client.eval(n.address,
                         "local c = (node.call('kv.get', 'c') or 0) + 1; node.call('kv.put', 'c', c); "
                         "return c, node.call('count.bump')");
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_integer() == 1);
  CHECK(r->results.get(2).as_integer() == 1);
  CHECK(bumps == 1);
  CHECK(n.client.call(n.address, "kv.get", Value::array({"c"}))->as_integer() == 1);
  // A chunk that catches the refusal (pcall) is run again all the same.
  auto caught = n.client.eval(n.address, "local ok = pcall(node.call, 'count.bump') return ok");
  REQUIRE(caught.ok());
  CHECK(caught->results.get(1).as_bool());
  CHECK(bumps == 2);
  CHECK(n.inline_count() == 0);
  CHECK(n.server.stats().evals_served == 2);
}

TEST_CASE("errors are the same on the fast path as on the worker path") {
  TrustedServer fast;
  TrustedServer slow(/*inline_instructions=*/0);
  struct Case {
    std::string source;
    Limits limits;
    Errc code;
    bool inline_expected;
  };
  const std::vector<Case> cases = {
      {"error('boom')", {}, Errc::lua_error, true},
      {"return node.call('no.such')", {}, Errc::lua_error, false},
      {"return node.call('kv.get', 1)", {}, Errc::lua_error, true},
      {"while true do end", Limits{5'000, 0, 0}, Errc::cpu_limit, true},          // the request's own limit
      {"while true do end", Limits{1'000'000, 0, 0}, Errc::cpu_limit, false},     // past the inline budget
      {"return string.gmatch('a', 'a')", {}, Errc::not_transferable, true},
  };
  std::uint64_t expected_inline = 0;
  for (const Case& c : cases) {
    CAPTURE(c.source);
    EvalOptions o;
    o.limits = c.limits;
    auto a = fast.client.eval(fast.address, c.source, Value::table(), o);
    auto b = slow.client.eval(slow.address, c.source, Value::table(), o);
    REQUIRE_FALSE(a.ok());
    REQUIRE_FALSE(b.ok());
    CHECK(a.error().code == c.code);
    CHECK(a.error().code == b.error().code);
    CHECK(a.error().message == b.error().message);
    if (c.inline_expected) ++expected_inline;
    CHECK(fast.inline_count() == expected_inline);
  }
  CHECK(slow.inline_count() == 0);
  CHECK(fast.server.stats().requests_failed == cases.size());
}

TEST_CASE("many evaluations in flight on one connection each get their own answer, inline or on a worker") {
  TrustedServer n;
  std::vector<std::future<Result<EvalResult>>> futures;
  for (int i = 0; i < 64; ++i) {
    futures.push_back(asio::co_spawn(node_executor(n.client),
                                     async_eval(n.client, n.address, "local x = ... return x * 2", Value::array({i})),
                                     asio::use_future));
  }
  for (int i = 0; i < 64; ++i) {
    auto r = futures[static_cast<std::size_t>(i)].get();
    REQUIRE(r.ok());
    CHECK(r->results.get(1).as_integer() == 2 * i);
  }
  // Back to back, some give way to the workers (how many depends on timing): all are answered.
  CHECK(n.inline_count() >= 1);
  CHECK(n.inline_count() <= 64);
  CHECK(n.server.stats().evals_served == 64);
}

TEST_CASE("back to back, trusted evaluations stay on the network thread for a streak, then one goes to the workers") {
  using namespace std::chrono_literals;
  const auto t0 = std::chrono::steady_clock::time_point{} + 1h;
  std::chrono::steady_clock::time_point streak{};
  // The thread was free: any level, and a streak starts.
  CHECK(inline_turn(t0, t0 - 1ms, streak) == InlineTurn::any_level);
  CHECK(streak == t0);
  // The next frame of a burst, 2 us after the last run ended: trusted only, the same streak.
  CHECK(inline_turn(t0 + 10us, t0 + 8us, streak) == InlineTurn::trusted_only);
  CHECK(inline_turn(t0 + kInlineStreak - 1us, t0 + kInlineStreak - 3us, streak) == InlineTurn::trusted_only);
  CHECK(streak == t0);
  // Still back to back once the streak has lasted its length: the workers take this one.
  CHECK(inline_turn(t0 + kInlineStreak, t0 + kInlineStreak - 2us, streak) == InlineTurn::workers);
  CHECK(inline_turn(t0 + kInlineStreak + 1us, t0 + kInlineStreak - 2us, streak) == InlineTurn::workers);
  // A gap of kBackToBack since the last inline run: a new streak.
  const auto later = t0 + kInlineStreak - 2us + kBackToBack;
  CHECK(inline_turn(later, t0 + kInlineStreak - 2us, streak) == InlineTurn::any_level);
  CHECK(streak == later);
}

TEST_CASE("a spinning evaluation holds the reader only for the inline budget: a kv.get behind it is answered first") {
  TrustedServer n;
  REQUIRE(n.client.call(n.address, "kv.put", Value::array({"k", 7})).ok());
  // Both on the client's one connection to the server, the spin first.
  auto spin = asio::co_spawn(node_executor(n.client), async_eval(n.client, n.address, "while true do end", Value::table()),
                             asio::use_future);
  auto get = asio::co_spawn(node_executor(n.client), async_call(n.client, n.address, "kv.get", Value::array({"k"})),
                            asio::use_future);
  auto got = get.get();
  REQUIRE(got.ok());
  CHECK(got->as_integer() == 7);
  // The spin (100M instructions by default, seconds of work) is still running on a worker.
  CHECK(spin.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
  auto stopped = spin.get();
  REQUIRE_FALSE(stopped.ok());
  CHECK(stopped.error().code == Errc::cpu_limit);
  CHECK(stopped.error().message == "CPU limit of 100000000 instructions exceeded");
  CHECK(n.inline_count() == 0);
  // A hostile allocation is stopped with its reason the same way, and the node goes on.
  auto hog = n.client.eval(n.address, "local t, s = {}, ('x'):rep(1048576) while true do t[#t + 1] = s .. #t end");
  REQUIRE_FALSE(hog.ok());
  CHECK(hog.error().code == Errc::memory_limit);
  CHECK(hog.error().message == "memory limit of 67108864 bytes exceeded");
  auto after = n.client.eval(n.address, "return node.call('kv.get', 'k')");
  REQUIRE(after.ok());
  CHECK(after->results.get(1).as_integer() == 7);
}

namespace {

// A node whose peers' code runs in the process jail, with warm guests.
struct ProcessServer {
  Node server;
  Node client{NodeOptions{.name = "client"}};
  std::string address;
  ProcessServer() : server(options()) {
    auto bound = server.listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    address = *bound;
  }
  static NodeOptions options() {
    NodeOptions o;
    o.name = "server";
    o.peer_isolation = Isolation::process;
    o.warm_guests = 2;
    return o;
  }
  std::uint64_t inline_count() const { return server.stats().evals_inline; }
  // Evaluates a read-only chunk until one ran on the network thread (a warm guest was waiting
  // for it): the first ones start the jail and its guests on a worker.
  void until_inline() {
    REQUIRE(client.call(address, "kv.put", Value::array({"k", 41})).ok());
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (inline_count() == 0 && std::chrono::steady_clock::now() < until) {
      auto r = client.eval(address, "return node.call('kv.get', 'k') + 1");
      REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
      CHECK(r->results.get(1).as_integer() == 42);
      CHECK(r->isolation == Isolation::process);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE(inline_count() >= 1);
  }
};

}  // namespace

TEST_CASE("at the process level a tiny evaluation runs on the network thread in a warm guest") {
  ProcessServer n;
  n.until_inline();
  const std::uint64_t before = n.inline_count();
  auto r = n.client.eval(n.address, "return node.call('kv.get', 'k') + 1, node.call('node.info').name");
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_integer() == 42);
  CHECK(r->results.get(2).as_string() == "server");
  CHECK(r->isolation == Isolation::process);
  CHECK(n.inline_count() >= before);
}

TEST_CASE("at the process level a write gives way before it happens, and happens once") {
  ProcessServer n;
  std::atomic<int> bumps{0};
  n.server.register_service("count.bump", [&bumps](const Value&) -> Result<Value> { return Value(++bumps); });
  n.until_inline();
  const std::uint64_t before = n.inline_count();
  const std::uint64_t served = n.server.stats().evals_served;
  auto r = n.client.eval(n.address,
                         "local c = (node.call('kv.get', 'c') or 0) + 1; node.call('kv.put', 'c', c); "
                         "return c, pcall(node.call, 'count.bump')");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->results.get(1).as_integer() == 1);
  CHECK(r->results.get(2).as_bool());
  CHECK(bumps == 1);
  CHECK(n.client.call(n.address, "kv.get", Value::array({"c"}))->as_integer() == 1);
  CHECK(n.inline_count() == before);
  CHECK(n.server.stats().evals_served == served + 1);
}

TEST_CASE("at the process level a loop past the inline budget runs in full, and a hostile one is still stopped") {
  ProcessServer n;
  n.until_inline();
  auto sum = n.client.eval(n.address, "local s = 0 for i = 1, 200000 do s = s + i end return s");
  REQUIRE_MESSAGE(sum.ok(), (sum.ok() ? "" : sum.error().message));
  CHECK(sum->results.get(1).as_integer() == 20000100000LL);
  EvalOptions o;
  o.limits = Limits{1'000'000, 0, 0};
  auto spin = n.client.eval(n.address, "while true do end", Value::table(), o);
  REQUIRE_FALSE(spin.ok());
  CHECK(spin.error().code == Errc::cpu_limit);
  CHECK(spin.error().message == "CPU limit of 1000000 instructions exceeded");
  // The node goes on serving.
  auto after = n.client.eval(n.address, "return node.call('kv.get', 'k') + 1");
  REQUIRE(after.ok());
  CHECK(after->results.get(1).as_integer() == 42);
}

TEST_CASE("at the process level a repeated read gets the store as of each evaluation, and a write then a read sees the write") {
  ProcessServer n;
  n.until_inline();
  // Carried reads (docs/jails.md): the guest learns the chunk's kv.get; each later run gets
  // its value as of that run's start.
  for (int i = 0; i < 6; ++i) {
    REQUIRE(n.client.call(n.address, "kv.put", Value::array({"k", 100 + i})).ok());
    auto r = n.client.eval(n.address, "return node.call('kv.get', 'k') + 1");
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    CHECK(r->results.get(1).as_integer() == 101 + i);
  }
  for (int i = 0; i < 3; ++i) {
    REQUIRE(n.client.call(n.address, "kv.put", Value::array({"w", i})).ok());
    auto r = n.client.eval(n.address,
                           "local a = node.call('kv.get', 'w'); node.call('kv.put', 'w', a + 10); "
                           "return a, node.call('kv.get', 'w')");
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    CHECK(r->results.get(1).as_integer() == i);
    CHECK(r->results.get(2).as_integer() == i + 10);
  }
}

TEST_CASE("at the process level many evaluations in flight on one connection each get their own answer, in bursts") {
  ProcessServer n;
  n.until_inline();
  // Queued behind each other, they run as bursts in warm guests (docs/jails.md, "Bursts"):
  // each with its own arguments, its own carried read, and one raising among them.
  std::vector<std::future<Result<EvalResult>>> futures;
  for (int i = 0; i < 48; ++i) {
    const char* source = i % 7 == 3 ? "local x = ... error('no ' .. x, 0)" : "local x = ... return x * 2 + node.call('kv.get', 'k')";
    futures.push_back(asio::co_spawn(node_executor(n.client), async_eval(n.client, n.address, source, Value::array({i})),
                                     asio::use_future));
  }
  for (int i = 0; i < 48; ++i) {
    auto r = futures[static_cast<std::size_t>(i)].get();
    if (i % 7 == 3) {
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == Errc::lua_error);
      CHECK(r.error().message == "Lua error: no " + std::to_string(i));
      continue;
    }
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    CHECK(r->results.get(1).as_integer() == 2 * i + 41);
    CHECK(r->isolation == Isolation::process);
  }
  // The node serves on, one evaluation at a time.
  auto after = n.client.eval(n.address, "return node.call('kv.get', 'k') + 1");
  REQUIRE(after.ok());
  CHECK(after->results.get(1).as_integer() == 42);
}

TEST_CASE("a service replaced between requests is the one the next inline evaluation and call reach") {
  TrustedServer n;
  REQUIRE(n.client.call(n.address, "kv.put", Value::array({"k", 1})).ok());
  auto first = n.client.eval(n.address, "return node.call('kv.get', 'k')");
  REQUIRE(first.ok());
  CHECK(first->results.get(1).as_integer() == 1);
  auto called = n.client.call(n.address, "kv.get", Value::array({"k"}));
  REQUIRE(called.ok());
  CHECK(called->as_integer() == 1);
  const std::uint64_t inline_before = n.inline_count();
  // Still cheap: served in place, with the new answer.
  n.server.register_service("kv.get", [](const Value&) -> Result<Value> { return Value(std::int64_t{100}); },
                            ServiceOptions{.inline_on_network_thread = true, .read_only = true});
  auto second = n.client.eval(n.address, "return node.call('kv.get', 'k')");
  REQUIRE(second.ok());
  CHECK(second->results.get(1).as_integer() == 100);
  CHECK(n.inline_count() == inline_before + 1);
  called = n.client.call(n.address, "kv.get", Value::array({"k"}));
  REQUIRE(called.ok());
  CHECK(called->as_integer() == 100);
  // Not cheap any more: the evaluation gives way to a worker, which reaches the new one.
  n.server.register_service("kv.get", [](const Value&) -> Result<Value> { return Value(std::int64_t{200}); });
  auto third = n.client.eval(n.address, "return node.call('kv.get', 'k')");
  REQUIRE(third.ok());
  CHECK(third->results.get(1).as_integer() == 200);
  CHECK(n.inline_count() == inline_before + 1);
  called = n.client.call(n.address, "kv.get", Value::array({"k"}));
  REQUIRE(called.ok());
  CHECK(called->as_integer() == 200);
}
