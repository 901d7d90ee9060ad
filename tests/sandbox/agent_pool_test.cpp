// Weak agent steps on pooled states (sandbox/lua/lua_state_pool.hpp): a step that leaves by
// agent.go or agent.wait gives its state back, a killed or failed one never does, and nothing
// one agent's step does (globals, library tables, the `agent` table, require_remote's modules,
// registry entries, upvalues of its chunk) reaches the next agent's step on the same state.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <luajit-2.1/lua.hpp>

#include "sandbox/lua/lua_state_pool.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::AgentInput;
using sojourn::sandbox::AgentOutcome;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::RunInput;
namespace detail = sojourn::sandbox::detail;

constexpr Limits kLimits{10'000'000, 16u << 20, 5000};

class Host : public HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    if (service == "code.require") {
      ++require_calls;
      Value m = Value::table();
      m.set("source", "return { name = ... }");
      m.set("chunk", "mod");
      return m;
    }
    if (service == "agent.log") {
      logs.push_back(args.get(1).as_string());
      return Value{};
    }
    return sojourn::make_error(Errc::no_such_service, "no such service: " + std::string(service));
  }
  int require_calls = 0;
  std::vector<std::string> logs;
};

Result<AgentOutcome> step(std::string_view source, std::string_view entry, std::string_view id,
                          std::string_view principal = "signer p1", HostCalls* host = nullptr, Limits limits = kLimits,
                          Value state = Value::table()) {
  RunInput input;
  input.source = source;
  input.chunk_name = "main.lua";
  input.limits = limits;
  input.principal = principal;
  Value info = Value::table();
  info.set("id", std::string(id));
  AgentInput agent{entry, std::move(state), std::move(info)};
  return sojourn::sandbox::run_agent(input, agent, host);
}

AgentOutcome ok(const Result<AgentOutcome>& r) {
  if (!r.ok()) FAIL(r.error().message);
  return *r;
}

// The idle state of `principal` (taken out and put back), or null when none is idle.
lua_State* idle_state_of(std::string_view principal) {
  const std::size_t idle = detail::idle_pooled_states();
  detail::PooledStatePtr state = detail::take_pooled_state(principal);
  REQUIRE(state != nullptr);
  lua_State* L = detail::idle_pooled_states() < idle ? state->L : nullptr;
  if (L != nullptr) detail::return_pooled_state(std::move(state));
  return L;
}

}  // namespace

TEST_CASE("a weak agent step that leaves by agent.go gives its prepared state back") {
  detail::clear_state_pool();
  constexpr std::string_view kBundle =
      "return { start = function(s) s.n = (s.n or 0) + 1; agent.go('tcp://peer:1', 'start') end }";
  const AgentOutcome first = ok(step(kBundle, "start", "a1"));
  CHECK(first.went);
  CHECK(first.go_peer == "tcp://peer:1");
  CHECK(first.state.get("n").as_integer() == 1);
  REQUIRE(detail::idle_pooled_states() == 1);  // agent.go is a deliberate stop, not a kill
  lua_State* L = idle_state_of("signer p1");
  REQUIRE(L != nullptr);
  const AgentOutcome second = ok(step(kBundle, "start", "a1", "signer p1", nullptr, kLimits, first.state));
  CHECK(second.state.get("n").as_integer() == 2);
  CHECK(idle_state_of("signer p1") == L);
  // agent.wait, and a step whose entry returns, give it back too.
  ok(step("return { w = function() agent.wait('later') end }", "w", "a1"));
  CHECK(idle_state_of("signer p1") == L);
  const AgentOutcome done = ok(step("return { r = function() return 7 end }", "r", "a1"));
  CHECK(done.results.get(1).as_integer() == 7);
  CHECK(idle_state_of("signer p1") == L);
  // Another principal's steps never get it.
  CHECK(idle_state_of("signer p2") == nullptr);
}

TEST_CASE("a pcall around agent.go does not keep the agent on a pooled state") {
  detail::clear_state_pool();
  const AgentOutcome r = ok(step("return { s = function(st) local ok = pcall(agent.go, 'tcp://x:1', 's');"
                                 " st.after = true; return 'stayed' end }",
                                 "s", "a1"));
  CHECK(r.went);
  CHECK(r.state.get("after").is_nil());
  CHECK(detail::idle_pooled_states() == 1);
}

TEST_CASE("the next agent's step on the same state sees nothing of the last one's") {
  detail::clear_state_pool();
  Host host;
  // Agent A: a global, a field of its `agent` table, a replaced agent function, a module of
  // require_remote it changes, and its chunk's upvalue.
  constexpr std::string_view kBundle =
      "local count = 0\n"
      "return { start = function(s)\n"
      "  count = count + 1\n"
      "  s.count = count\n"
      "  s.seen_global = leaked_global\n"
      "  s.seen_field = agent.secret\n"
      "  s.id = agent.id\n"
      "  s.go_is_function = type(agent.go) == 'function'\n"
      "  local m = require_remote('mod')\n"
      "  s.seen_module = m.secret\n"
      "  leaked_global = agent.id\n"
      "  agent.secret = agent.id\n"
      "  agent.log = function() end\n"
      "  m.secret = agent.id\n"
      "  _G.agent = nil\n"
      "  return 1\n"
      "end }\n";
  const AgentOutcome a = ok(step(kBundle, "start", "agent-A", "signer p1", &host));
  CHECK(a.state.get("id").as_string() == "agent-A");
  CHECK(a.state.get("go_is_function").as_bool());
  CHECK(host.require_calls == 1);
  REQUIRE(detail::idle_pooled_states() == 1);
  lua_State* L = idle_state_of("signer p1");
  REQUIRE(L != nullptr);
  const std::string registry = detail::describe_registry(L);

  const AgentOutcome b = ok(step(kBundle, "start", "agent-B", "signer p1", &host));
  CHECK(idle_state_of("signer p1") == L);  // the same state served B
  CHECK(b.state.get("id").as_string() == "agent-B");
  CHECK(b.state.get("count").as_integer() == 1);  // the cached chunk runs anew: a new upvalue
  CHECK(b.state.get("seen_global").is_nil());
  CHECK(b.state.get("seen_field").is_nil());
  CHECK(b.state.get("seen_module").is_nil());
  CHECK(b.state.get("go_is_function").as_bool());
  CHECK(host.require_calls == 2);  // the module was loaded again for B, not taken from A's run
  CHECK(detail::describe_registry(L) == registry);

  // B's agent.log is the real one again.
  ok(step("return { s = function() agent.log('from C') end }", "s", "agent-C", "signer p1", &host));
  CHECK(host.logs == std::vector<std::string>{"from C"});
}

TEST_CASE("a step that changes a library table loses its state; the next agent never sees the change") {
  detail::clear_state_pool();
  ok(step("return { s = function() string.leak = 'A'; table.insert = nil end }", "s", "agent-A"));
  CHECK(detail::idle_pooled_states() == 0);  // thrown away, not reset
  const AgentOutcome b =
      ok(step("return { s = function(st) st.leak = string.leak; st.insert = type(table.insert) end }", "s", "agent-B"));
  CHECK(b.state.get("leak").is_nil());
  CHECK(b.state.get("insert").as_string() == "function");
}

TEST_CASE("a killed or failed agent step's state is never reused") {
  detail::clear_state_pool();
  ok(step("return { s = function() return 1 end }", "s", "a1"));
  lua_State* L = idle_state_of("signer p1");
  REQUIRE(L != nullptr);
  // The CPU limit: a kill, not a deliberate stop.
  const Limits tight{200'000, 16u << 20, 5000};
  auto killed = step("return { s = function() while true do end end }", "s", "a1", "signer p1", nullptr, tight);
  REQUIRE_FALSE(killed.ok());
  CHECK(killed.error().code == Errc::cpu_limit);
  CHECK(detail::idle_pooled_states() == 0);
  // A kill that a pcall swallowed stays one at the agent.go after it.
  ok(step("return { s = function() return 1 end }", "s", "a1"));
  REQUIRE(detail::idle_pooled_states() == 1);  // a newly prepared state (a pointer may repeat)
  auto swallowed = step("return { s = function() pcall(function() while true do end end); agent.go('tcp://x:1', 's') end }",
                        "s", "a1", "signer p1", nullptr, tight);
  REQUIRE_FALSE(swallowed.ok());
  CHECK(swallowed.error().code == Errc::cpu_limit);
  CHECK(detail::idle_pooled_states() == 0);
  // A Lua error in the entry.
  ok(step("return { s = function() return 1 end }", "s", "a1"));
  REQUIRE(detail::idle_pooled_states() == 1);
  auto failed = step("return { s = function() error('boom') end }", "s", "a1");
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().code == Errc::lua_error);
  CHECK(detail::idle_pooled_states() == 0);
}

TEST_CASE("an agent's state holding agent and library functions converts the same on a pooled state") {
  detail::clear_state_pool();
  constexpr std::string_view kBundle =
      "return { s = function(st) st.log = agent.log; st.upper = string.upper; agent.go('tcp://x:1', 's') end }";
  const AgentOutcome pooled = ok(step(kBundle, "s", "a1"));
  const AgentOutcome fresh = ok(step(kBundle, "s", "a1", ""));  // no principal: a fresh state
  REQUIRE(pooled.state.get("log").is_function());
  REQUIRE(pooled.state.get("upper").is_function());
  CHECK(pooled.state.get("log").library_name() == "agent.log");
  CHECK(pooled.state.get("upper").library_name() == "string.upper");
  CHECK(sojourn::deep_equal(pooled.state, fresh.state));
  // And it travels back in: the next step gets the agent's own log function.
  Host host;
  const AgentOutcome next =
      ok(step("return { s = function(st) st.log('again'); return st.log == agent.log end }", "s", "a1", "signer p1", &host,
              kLimits, pooled.state));
  CHECK(host.logs == std::vector<std::string>{"again"});
  CHECK(next.results.get(1).as_bool());
}
