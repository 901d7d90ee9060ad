// A trusted weak step whose text calls no host service is tried on the network thread that
// took its TRANSFER (docs/migration.md, "The step on the network thread"): within the inline
// budgets it is the step; past them it is dropped and the same record runs again on a
// worker, its effects kept once. A text that names `node` (or another route to a service)
// always runs on a worker. The hop's exactly-once hand-over and itinerary are unchanged.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "agents/inline_step.hpp"
#include "sojourn/agents/node.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/temp_dir.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Cluster;

namespace {

// Bounces between its two stops until `left` runs out; counts its steps in its state before
// anything else (a dropped attempt's count would show twice); `burn` Lua loop turns first.
constexpr const char* kQuiet = R"(
local M = {}
function M.start(s) return M.hop(s) end
function M.hop(s)
  s.steps = s.steps + 1
  local x = 0
  for i = 1, s.burn do x = x + i end
  s.left = s.left - 1
  if s.left < 0 then return s.steps, agent.epoch end
  local a, b = s.stops[1], s.stops[2]
  s.stops[1], s.stops[2] = b, a
  agent.go(a, "hop")
end
return M)";

// The same, counting its steps by a service as well.
constexpr const char* kCalling = R"(
local M = {}
function M.start(s) return M.hop(s) end
function M.hop(s)
  node.call("test.count")
  s.steps = s.steps + 1
  s.left = s.left - 1
  if s.left < 0 then return s.steps, agent.epoch end
  local a, b = s.stops[1], s.stops[2]
  s.stops[1], s.stops[2] = b, a
  agent.go(a, "hop")
end
return M)";

std::string launch(Node& home, const char* text, const std::string& one, const std::string& two, int hops, int burn) {
  auto bundle = single_file_bundle("bouncer", text);
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  Value s = Value::table();
  s.set("left", hops);
  s.set("steps", 0);
  s.set("burn", burn);
  s.set("stops", Value::array({Value(one), Value(two)}));
  s.set("payload", std::string(4096, 'x'));
  l.state = s;
  l.max_hops = static_cast<std::uint32_t>(hops + 2);
  auto id = home.launch("", l);
  REQUIRE(id.ok());
  return *id;
}

// How many events of `kind` a trace file holds.
int events(const std::string& file, const std::string& kind) {
  std::ifstream in(file);
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"kind\":\"" + kind + "\"") != std::string::npos) ++n;
  }
  return n;
}

// Every hop of the tour, each epoch once and in order, alternating between the two stops.
void check_itinerary(const AgentStatus& s, const std::string& one, const std::string& two, int hops) {
  REQUIRE(s.hops.size() == static_cast<std::size_t>(hops + 1));
  for (std::size_t i = 0; i < s.hops.size(); ++i) {
    CHECK(s.hops[i].epoch == i);
    if (i > 0) CHECK(s.hops[i].node == (i % 2 == 1 ? one : two));
  }
}

struct Traced {
  sojourn::test::TempDir dir;
  Cluster c;
  explicit Traced(std::uint64_t inline_instructions = 20'000)
      : c(3, [this, inline_instructions](int i, NodeOptions& o) {
          o.peer_isolation = Isolation::trusted;
          o.inline_eval_instructions = inline_instructions;
          // The instruction budget decides here: a loaded machine may stall a step for more
          // than the default 2 ms of wall time, which would also (rightly) drop the attempt.
          o.inline_eval_wall_ms = 2000;
          o.trace = dir / ("trace" + std::to_string(i) + ".jsonl");
        }) {}
  int count(const std::string& kind) {
    int n = 0;
    for (int i = 0; i < 3; ++i) n += events(dir / ("trace" + std::to_string(i) + ".jsonl"), kind);
    return n;
  }
  // The count once it reaches `n`, or after 10 s: the source's trace gets a hop's last event
  // (its COMMIT received) after the agent may already have finished at home.
  int count_reaching(const std::string& kind, int n) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    int seen = count(kind);
    while (seen < n && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      seen = count(kind);
    }
    return seen;
  }
};

}  // namespace

TEST_CASE("the inline step's text rule: no service, agent only as go, wait or a fact's read") {
  CHECK(inline_step_text(kQuiet));
  CHECK(inline_step_text("local n = agent.itinerary[1]; if n then agent.go(n, 'hop') end"));
  CHECK(inline_step_text("local h = agent.here; agent.wait('next')"));
  CHECK(inline_step_text("-- node.call('x')\nlocal s = 'node.call(1)' return s .. [[agent.log()]]"));  // comments, strings
  CHECK(inline_step_text("local t = {} t.node = 1 return t.node, t:node()"));                           // fields
  CHECK_FALSE(inline_step_text(kCalling));
  CHECK_FALSE(inline_step_text("agent.log('hi')"));
  CHECK_FALSE(inline_step_text("return agent.receive()"));
  CHECK_FALSE(inline_step_text("local a = agent; a.log('x')"));
  CHECK_FALSE(inline_step_text("agent['log']('x')"));
  CHECK_FALSE(inline_step_text("agent.go 'peer'"));             // a call without parentheses
  CHECK_FALSE(inline_step_text("agent.here = 'x'"));            // an assignment, not a read
  CHECK_FALSE(inline_step_text("function agent.go() end"));
  CHECK_FALSE(inline_step_text("local m = require_remote('m')"));
  CHECK_FALSE(inline_step_text("return _G['no' .. 'de']"));
  CHECK_FALSE(inline_step_text("return getfenv(1).node"));
  CHECK_FALSE(inline_step_text("return rawget(getmetatable('').__index, 'x')"));
  CHECK_FALSE(inline_step_text("return loadstring('return node')()"));
  CHECK_FALSE(inline_step_text("local f = coroutine.wrap(function() end)"));
  CHECK_FALSE(inline_step_text("local s = 'unterminated"));  // does not lex
}

TEST_CASE("a quiet tour's steps run on the network thread, each once, every hop in order") {
  Traced t;
  constexpr int kHops = 30;
  const std::string id = launch(t.c[0], kQuiet, t.c.addr[1], t.c.addr[2], kHops, 10);
  auto s = t.c[0].wait_agent("", id, 60s);
  REQUIRE(s.ok());
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_integer() == kHops + 1);  // every step once, none twice
  CHECK(s->result.get(2).as_integer() == kHops);
  check_itinerary(*s, t.c.addr[1], t.c.addr[2], kHops);
  CHECK(t.count("step_inline") == kHops + 1);  // the launch's step too
  CHECK(t.count("step_gave_way") == 0);
  CHECK(t.count_reaching("commit_received", kHops) == kHops);  // one hand-over a hop
}

TEST_CASE("a step past the inline budget is dropped and runs once more on a worker, its effects kept once") {
  Traced t;
  constexpr int kHops = 12;
  // ~4 instructions a loop turn: 20,000 turns are past the 20,000-instruction inline budget,
  // far inside a step's own.
  const std::string id = launch(t.c[0], kQuiet, t.c.addr[1], t.c.addr[2], kHops, 20'000);
  auto s = t.c[0].wait_agent("", id, 60s);
  REQUIRE(s.ok());
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_integer() == kHops + 1);  // the dropped attempts' counts are not kept
  check_itinerary(*s, t.c.addr[1], t.c.addr[2], kHops);
  CHECK(t.count("step_gave_way") == kHops + 1);  // each step tried once inline, then on a worker
  CHECK(t.count("step_inline") == 0);
  CHECK(t.count_reaching("commit_received", kHops) == kHops);
  CHECK(t.count("departure") == kHops);  // a dropped attempt's agent.go went nowhere
}

TEST_CASE("a step naming node never runs on the network thread; its service is called once a step") {
  Traced t;
  std::atomic<int> calls{0};
  for (int i = 0; i < 3; ++i) {
    t.c[i].register_service("test.count", [&calls](const Value&) -> Result<Value> {
      ++calls;
      return Value{};
    });
  }
  constexpr int kHops = 10;
  const std::string id = launch(t.c[0], kCalling, t.c.addr[1], t.c.addr[2], kHops, 0);
  auto s = t.c[0].wait_agent("", id, 60s);
  REQUIRE(s.ok());
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_integer() == kHops + 1);
  CHECK(calls.load() == kHops + 1);
  check_itinerary(*s, t.c.addr[1], t.c.addr[2], kHops);
  CHECK(t.count("step_inline") == 0);
  CHECK(t.count("step_gave_way") == 0);  // not even tried
}

TEST_CASE("with no inline budget a quiet step runs on a worker") {
  Traced t(0);
  constexpr int kHops = 6;
  const std::string id = launch(t.c[0], kQuiet, t.c.addr[1], t.c.addr[2], kHops, 10);
  auto s = t.c[0].wait_agent("", id, 60s);
  REQUIRE(s.ok());
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_integer() == kHops + 1);
  check_itinerary(*s, t.c.addr[1], t.c.addr[2], kHops);
  CHECK(t.count("step_inline") == 0);
  CHECK(t.count("step_gave_way") == 0);
}
