// Strong mobility between real nodes on loopback (issue 13): agents launched strong run in the
// process jail, agent.go(peer) without an entry hands their heap image over with the
// exactly-once OFFER/TRANSFER/COMMIT, and they go on at the next line on the peer. Hostile
// images are in strong_image_refusal_test.cpp, policies in strong_policy_test.cpp, large
// images in strong_transfer_test.cpp.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include "sojourn/agents/node.hpp"
#include "tests/agents/strong_support.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace sojourn::strong_test;
using namespace std::chrono_literals;
using sojourn::test::Cluster;

namespace {

Value stops(const Cluster& c) { return Value::array({c.addr[1], c.addr[2]}); }

// The issue's example: a generator, a loop and its locals carried through two moves.
constexpr const char* kTour = R"(
function start(state)
  local seen, gen = {}, coroutine.wrap(function() for i = 1, 10 do coroutine.yield(i) end end)
  for i, stop in ipairs(state.stops) do
    local n = gen()
    agent.go(stop)
    seen[#seen + 1] = { at = agent.here, n = n, price = node.call("kv.get", "price") }
  end
  return seen
end
)";

// Moves from inside five nested calls, pcall, xpcall with its handler and coroutines the agent
// resumed (through coroutine.create and coroutine.wrap).
constexpr const char* kFrames = R"(
local function nest(n, acc, to)
  if n == 0 then
    agent.go(to)
    return acc .. "@" .. agent.here
  end
  local r = nest(n - 1, acc .. n, to)
  return r .. "<" .. n
end
function start(s)
  local B, C = s.stops[1], s.stops[2]
  local out = {}
  out.nested = nest(5, "", B)
  local ok, at = pcall(function() agent.go(C) return agent.here end)
  out.pcall_ok, out.pcall_at = ok, at
  local handled, msg = xpcall(function() agent.go(B) error("after the move", 0) end,
                              function(m) return m .. ", handled at " .. agent.here end)
  out.xpcall_ok, out.xpcall_msg = handled, msg
  local co = coroutine.create(function(a)
    local x = coroutine.yield(a + 1)
    agent.go(C)
    return x * 2, agent.here
  end)
  local _, first = coroutine.resume(co, 1)
  local resumed, doubled, there = coroutine.resume(co, 21)
  out.co = { first = first, resumed = resumed, doubled = doubled, at = there, status = coroutine.status(co) }
  local gen = coroutine.wrap(function()
    coroutine.yield("one")
    agent.go(B)
    coroutine.yield("two at " .. agent.here)
  end)
  out.gen = { gen(), gen() }
  return out
end
)";

// Shared upvalues, a metatable, a weak table and a pairs loop interrupted by a move.
constexpr const char* kHeap = R"(
function start(s)
  local B, C = s.stops[1], s.stops[2]
  local out = {}
  local count = 0
  local function inc() count = count + 1 return count end
  local function get() return count end
  inc()
  agent.go(B)
  inc()
  out.shared = get()
  local t = setmetatable({}, { __index = function(_, k) return k .. "!" end })
  local weak = setmetatable({}, { __mode = "k" })
  local key = {}
  weak[key] = "kept"
  agent.go(C)
  out.meta = t.hello
  out.weak = weak[key]
  out.weak_mode = getmetatable(weak).__mode
  local keys = {}
  for i = 1, 200 do keys["k" .. i] = i end
  local before = {}
  for k in pairs(keys) do before[#before + 1] = k end
  local after, n = {}, 0
  for k in pairs(keys) do
    n = n + 1
    after[#after + 1] = k
    if n == 100 then agent.go(B) end
  end
  out.visited = #after
  out.same_order = table.concat(before, ",") == table.concat(after, ",")
  out.at = agent.here
  return out
end
)";

}  // namespace

TEST_CASE("the tour of the issue: a strong agent goes on at the next line on each stop") {
  Cluster c = strong_cluster(3);
  Value state = Value::table();
  state.set("stops", stops(c));
  auto id = launch_strong(c[0], bundle_of(kTour), state);
  REQUIRE_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
  AgentStatus s = run_to_end(c[0], *id);
  REQUIRE_MESSAGE(s.status == AgentState::finished, s.reason);
  Value seen = s.result.get(1);
  REQUIRE(seen.length() == 2);
  CHECK(seen.get(1).get("at").as_string() == c.addr[1]);
  CHECK(seen.get(1).get("n").as_integer() == 1);
  CHECK(seen.get(1).get("price").as_integer() == 110);
  CHECK(seen.get(2).get("at").as_string() == c.addr[2]);
  CHECK(seen.get(2).get("n").as_integer() == 2);
  CHECK(seen.get(2).get("price").as_integer() == 120);
  // Each hop says how it travelled and what its image cost.
  REQUIRE(s.hops.size() == 3);
  for (const AgentHop& h : s.hops) {
    CHECK(h.mobility == "strong");
    CHECK(h.isolation == "process");
  }
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(s.hops[i].image_bytes > 0);
    CHECK(s.hops[i].image_raw_bytes > s.hops[i].image_bytes);  // zero pages out, compressed
    CHECK(s.hops[i + 1].state_bytes == s.hops[i].image_bytes);  // what arrived is that image
  }
  CHECK(s.hops[2].image_bytes == 0);  // it finished there: no image left with it
  CHECK(s.epoch == 2);
  CHECK(s.location == c.addr[2]);
}

TEST_CASE("a move inside nested calls, pcall, xpcall and resumed coroutines keeps every frame") {
  Cluster c = strong_cluster(3);
  Value state = Value::table();
  state.set("stops", stops(c));
  auto id = launch_strong(c[0], bundle_of(kFrames), state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  REQUIRE_MESSAGE(s.status == AgentState::finished, s.reason);
  Value out = s.result.get(1);
  const std::string& B = c.addr[1];
  const std::string& C = c.addr[2];
  CHECK(out.get("nested").as_string() == "54321@" + B + "<1<2<3<4<5");
  CHECK(out.get("pcall_ok").as_bool());
  CHECK(out.get("pcall_at").as_string() == C);
  CHECK_FALSE(out.get("xpcall_ok").as_bool());
  CHECK(out.get("xpcall_msg").as_string() == "after the move, handled at " + B);
  Value co = out.get("co");
  CHECK(co.get("first").as_integer() == 2);
  CHECK(co.get("resumed").as_bool());
  CHECK(co.get("doubled").as_integer() == 42);
  CHECK(co.get("at").as_string() == C);
  CHECK(co.get("status").as_string() == "dead");
  Value gen = out.get("gen");
  CHECK(gen.get(1).as_string() == "one");
  CHECK(gen.get(2).as_string() == "two at " + B);
  CHECK(s.epoch == 5);
}

TEST_CASE("shared upvalues, metatables, weak tables and pairs order survive moves") {
  Cluster c = strong_cluster(3);
  Value state = Value::table();
  state.set("stops", stops(c));
  auto id = launch_strong(c[0], bundle_of(kHeap), state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  REQUIRE_MESSAGE(s.status == AgentState::finished, s.reason);
  Value out = s.result.get(1);
  CHECK(out.get("shared").as_integer() == 2);
  CHECK(out.get("meta").as_string() == "hello!");
  CHECK(out.get("weak").as_string() == "kept");
  CHECK(out.get("weak_mode").as_string() == "k");
  CHECK(out.get("visited").as_integer() == 200);
  CHECK(out.get("same_order").as_bool());
  CHECK(out.get("at").as_string() == c.addr[1]);
}

TEST_CASE("agent.checkpoint images the agent and it goes on from the image") {
  Cluster c = strong_cluster(1);
  auto id = launch_strong(c[0], bundle_of(R"(
function start()
  local n = 0
  for i = 1, 3 do n = n + i agent.checkpoint() end
  return n, agent.here
end)"));
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  REQUIRE_MESSAGE(s.status == AgentState::finished, s.reason);
  CHECK(s.result.get(1).as_integer() == 6);
  CHECK(s.result.get(2).as_string() == c.addr[0]);
  REQUIRE(s.hops.size() == 1);
  CHECK(s.hops[0].image_bytes > 0);  // the last checkpoint's image, kept in its record
  CHECK(s.hops[0].restore_us > 0);   // three resumes from it
  CHECK(s.epoch == 0);
}

TEST_CASE("strong agents are refused at the trusted level, at launch and at a hand-over") {
  SUBCASE("launch") {
    Cluster c = strong_cluster(1, Isolation::trusted);
    CHECK_ERROR(launch_strong(c[0], bundle_of(kHop)), Errc::sandbox_refused,
                "strong mobility needs the process or microvm level (trusted: ");
  }
  SUBCASE("hand-over: a node whose peer level is trusted runs an arriving strong agent jailed") {
    // An agent keeps the jail it carries (a node may strengthen it, never weaken it), so a
    // strong agent never reaches the trusted level by moving.
    Cluster c = strong_cluster(2, Isolation::trusted);
    Value state = Value::table();
    state.set("stops", Value::array({c.addr[1]}));
    auto id = launch_strong(c[0], bundle_of(kHop), state);
    REQUIRE(id.ok());
    AgentStatus s = run_to_end(c[0], *id);
    REQUIRE_MESSAGE(s.status == AgentState::finished, s.reason);
    CHECK(s.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
    REQUIRE(s.hops.size() == 2);
    CHECK(s.hops[1].isolation == "process");
    CHECK(s.hops[1].mobility == "strong");
  }
}

TEST_CASE("a strong agent out of its CPU budget stops with the reason sent home") {
  Cluster c = strong_cluster(2);
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], bundle_of(R"(
function start(s)
  agent.go(s.stops[1])
  local x = 0
  while true do x = x + 1 end
end)", 5'000'000), state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::failed);
  CHECK(s.reason == "agent " + *id + " ran out of its CPU budget of 5000000 instructions (at " + c.addr[1] + ")");
  CHECK(s.epoch == 1);
}

TEST_CASE("the node's listing shows a strong agent and the image it holds") {
  Cluster c = strong_cluster(1);
  auto id = launch_strong(c[0], bundle_of(R"(
function start()
  agent.checkpoint()
  local x = 0
  while true do x = x + 1 end
end)"));
  REQUIRE(id.ok());
  // After its checkpoint it spins until its CPU limit: the listing sees it holding the image.
  // Polled by time, not by a count: a loaded machine may take seconds to start the first step.
  bool seen = false;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (!seen && std::chrono::steady_clock::now() < until) {
    auto agents = c[0].list_agents();
    REQUIRE(agents.ok());
    for (const AgentSummary& a : *agents) {
      if (a.id == *id && a.image_bytes > 0) {
        CHECK(a.mobility == "strong");
        CHECK(a.isolation == "process");
        seen = true;
      }
    }
    if (!seen) std::this_thread::sleep_for(5ms);
  }
  CHECK(seen);
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::failed);
  CHECK(s.reason.find("CPU limit") != std::string::npos);
}
