// Tests of one agent step (run_agent): entry points, agent.go as an exit no pcall can keep,
// the state coming back, agent.* host calls and require_remote; at every level the machine
// has (agent.* host calls and require_remote cross a guest's channel unchanged).
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "sojourn/sandbox/lua_sandbox.hpp"
#include "tests/support/jail_levels.hpp"
#include "tests/support/error_checks.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::AgentInput;
using sojourn::sandbox::AgentOutcome;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::RunInput;

class AgentHost : public HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    calls.emplace_back(service);
    if (service == "agent.receive") {
      if (inbox.empty()) return Value{};
      Value m = inbox.front();
      inbox.erase(inbox.begin());
      return m;
    }
    if (service == "agent.log") {
      logs.push_back(args.get(1).as_string());
      return Value{};
    }
    if (service == "code.require") {
      Value m = Value::table();
      m.set("source", "local name = ...; return { greet = function(x) return name .. ':' .. x end }");
      m.set("chunk", "mod");
      return m;
    }
    return sojourn::make_error(Errc::no_such_service, "no such service: " + std::string(service));
  }
  std::vector<std::string> calls;
  std::vector<std::string> logs;
  std::vector<Value> inbox;
};

// One agent step at the level under test.
template <class Level>
Result<AgentOutcome> step(std::string_view source, std::string_view entry, Value state, HostCalls* host = nullptr,
                          Value info = Value::table()) {
  RunInput input;
  input.source = source;
  input.chunk_name = "agent";
  input.limits = Limits{10'000'000, 16u << 20, 5000};
  AgentInput agent{entry, std::move(state), std::move(info)};
  return Level::run_agent(input, agent, host);
}

Value state_with(const char* key, Value v) {
  Value t = Value::table();
  t.set(key, std::move(v));
  return t;
}

// The step ended at its first agent.go, to 127.0.0.1:7401 at "arrive", and at no later one.
template <class StepResult>
void check_went_to_first_stop(const StepResult& r) {
  REQUIRE(r.ok());
  CHECK(r->went);
  CHECK(r->go_peer == "127.0.0.1:7401");
  CHECK(r->go_entry == "arrive");
}

}  // namespace

TEST_CASE_TEMPLATE("an agent step calls the entry of the returned table with the state and returns both", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>("return { start = function(s) s.n = s.n + 1; return s.n * 10 end }", "start", state_with("n", 4));
  REQUIRE(r.ok());
  CHECK_FALSE(r->went);
  CHECK(r->results.get(1).as_integer() == 50);
  CHECK(r->state.get("n").as_integer() == 5);
}

TEST_CASE_TEMPLATE("an agent entry may be a global function", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>("function arrive(s) s.seen = agent.id end", "arrive", Value::table(), nullptr,
                state_with("id", "abc"));
  REQUIRE(r.ok());
  CHECK(r->state.get("seen").as_string() == "abc");
}

TEST_CASE_TEMPLATE("agent.go ends the step, and a pcall around it cannot keep the agent", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>(R"(
    return { start = function(s)
      s.before = true
      pcall(agent.go, "127.0.0.1:7401", "arrive")
      s.after_pcall = true
      agent.go("127.0.0.1:7402", "other")
    end })",
                "start", Value::table());
  check_went_to_first_stop(r);
  CHECK(r->state.get("before").truthy());
  CHECK(r->state.get("after_pcall").is_nil());
}

TEST_CASE_TEMPLATE("agent.go ends the step from a coroutine of the agent's own, and nothing after it runs", Level,
                   SOJOURN_SUITE_LEVELS) {
  // The step's own coroutine yields back to the node at agent.go; inside the agent's own
  // coroutine (or a callback of C code) the stop is the sticky kill: the same outcome.
  auto r = step<Level>(R"(
    return { start = function(s)
      local co = coroutine.wrap(function()
        s.inside = true
        agent.go("127.0.0.1:7401", "arrive")
        s.after_go = true
      end)
      pcall(co)
      s.after_coroutine = true
      agent.go("127.0.0.1:7402", "other")
    end })",
                       "start", Value::table());
  check_went_to_first_stop(r);
  CHECK(r->state.get("inside").truthy());
  CHECK(r->state.get("after_go").is_nil());
  CHECK(r->state.get("after_coroutine").is_nil());
}

TEST_CASE_TEMPLATE("agent.go inside a sort comparator ends the step there", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>(R"(
    return { start = function(s)
      local t = {3, 1, 2}
      pcall(table.sort, t, function(a, b)
        s.compared = true
        agent.go("127.0.0.1:7401", "arrive")
        return a < b
      end)
      s.after_sort = true
    end })",
                       "start", Value::table());
  REQUIRE(r.ok());
  CHECK(r->went);
  CHECK(r->go_peer == "127.0.0.1:7401");
  CHECK(r->state.get("compared").truthy());
  CHECK(r->state.get("after_sort").is_nil());
}

TEST_CASE_TEMPLATE("agent.wait inside pcall ends the step, asleep, and nothing after it runs", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>(R"(
    return { start = function(s)
      pcall(agent.wait, "woken")
      s.after_wait = true
    end })",
                       "start", Value::table());
  REQUIRE(r.ok());
  CHECK(r->waits);
  CHECK_FALSE(r->went);
  CHECK(r->go_entry == "woken");
  CHECK(r->state.get("after_wait").is_nil());
}

TEST_CASE_TEMPLATE("a bare coroutine.yield in an agent step is refused", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>("return { start = function(s) coroutine.yield(1); s.after = true end }", "start", Value::table());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::lua_error);
  CHECK(r.error().message == "Lua error: attempt to yield from outside a coroutine");
}

TEST_CASE_TEMPLATE("an error in an agent step keeps its position, and its entry's results come back", Level,
                   SOJOURN_SUITE_LEVELS) {
  auto failed = step<Level>("return { start = function(s)\n  error('boom')\nend }", "start", Value::table());
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().code == Errc::lua_error);
  CHECK(failed.error().message == "Lua error at agent:2: boom");
  auto done = step<Level>("return { start = function(s) return 1, 'two', s.x end }", "start", Value::table());
  REQUIRE(done.ok());
  CHECK_FALSE(done->went);
  CHECK(done->results.get(1).as_integer() == 1);
  CHECK(done->results.get(2).as_string() == "two");
}

TEST_CASE_TEMPLATE("agent.state is the same table as the entry's argument", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>("return { start = function(s) agent.state.x = 1; return rawequal(s, agent.state) end }", "start",
                Value::table());
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_bool());
  CHECK(r->state.get("x").as_integer() == 1);
}

TEST_CASE_TEMPLATE("a missing entry point is a clear error", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>("return {}", "nowhere", Value::table());
  REQUIRE_FALSE(r.ok());
  CHECK_ERROR(r, Errc::lua_error, "entry point 'nowhere'");
}

TEST_CASE_TEMPLATE("agent.receive and agent.log are host calls", Level, SOJOURN_SUITE_LEVELS) {
  AgentHost host;
  host.inbox.push_back(Value("hello"));
  auto r = step<Level>("return { start = function(s) s.a = agent.receive(); s.b = agent.receive(); agent.log('got', s.a, 3) end }",
                "start", Value::table(), &host);
  REQUIRE(r.ok());
  CHECK(r->state.get("a").as_string() == "hello");
  CHECK(r->state.get("b").is_nil());
  REQUIRE(host.logs.size() == 1);
  CHECK(host.logs[0] == "got\thello\t3");
}

TEST_CASE_TEMPLATE("require_remote loads a module's text from the host once per run", Level, SOJOURN_SUITE_LEVELS) {
  AgentHost host;
  RunInput input;
  std::string source = "local m = require_remote('stats'); local again = require_remote('stats');"
                       "return m.greet('x'), rawequal(m, again)";
  input.source = source;
  input.limits = Limits{10'000'000, 16u << 20, 5000};
  auto r = Level::run(input, &host);
  REQUIRE(r.ok());
  CHECK(r->get(1).as_string() == "stats:x");
  CHECK(r->get(2).as_bool());
  CHECK(std::count(host.calls.begin(), host.calls.end(), "code.require") == 1);
}

TEST_CASE_TEMPLATE("an agent step whose state holds a coroutine fails with the field's path", Level, SOJOURN_SUITE_LEVELS) {
  auto r = step<Level>("return { start = function(s) s.co = coroutine.create(function() end) end }", "start", Value::table());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::not_transferable);
  CHECK(r.error().message.rfind("value at state.co cannot travel", 0) == 0);
}

TEST_CASE_TEMPLATE("the step's facts reach the agent table whole, beside its functions", Level, SOJOURN_SUITE_LEVELS) {
  // As the node makes them: scalars and an array of strings (pushed directly).
  Value info = Value::table();
  info.set("id", "a1");
  info.set("home", "127.0.0.1:7400");
  info.set("epoch", std::int64_t{7});
  info.set("itinerary", Value::array({Value("127.0.0.1:7401"), Value("127.0.0.1:7402")}));
  auto r = step<Level>(R"(function start(s)
      s.seen = agent.id .. ' ' .. agent.home .. ' ' .. agent.epoch .. ' ' .. #agent.itinerary .. ' ' .. agent.itinerary[2]
      s.kinds = type(agent.go) .. type(agent.wait) .. type(agent.receive) .. type(agent.log)
    end)", "start", Value::table(), nullptr, info);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->state.get("seen").as_string() == "a1 127.0.0.1:7400 7 2 127.0.0.1:7402");
  CHECK(r->state.get("kinds").as_string() == "functionfunctionfunctionfunction");
  // A table met twice, or a nested one, keeps the generic push's shape: one table, shared.
  Value shared = Value::table();
  Value inner = shared.new_table();
  inner.set("x", std::int64_t{1});
  Value deep = shared.new_table();
  deep.set("inner", inner);
  shared.set("a", inner);
  shared.set("b", inner);
  shared.set("deep", deep);
  auto s = step<Level>("function start(s) s.same = agent.a == agent.b and agent.deep.inner == agent.a and agent.a.x == 1 end",
                       "start", Value::table(), nullptr, shared);
  REQUIRE_MESSAGE(s.ok(), (s.ok() ? "" : s.error().message));
  CHECK(s->state.get("same").as_bool());
}
