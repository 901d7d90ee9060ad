// Code-on-demand and mobile agents between real nodes over TCP on loopback: fetch with the
// cache in front, agent tours, the exactly-once hand-over under injected faults, tracking
// and messages to a moving agent.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>

#include "agents/agent_messages.hpp"
#include "agents/node_testing.hpp"  // agents/: the fault hooks
#include "sojourn/agents/node.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/log_watch.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Cluster;

namespace {

// The source drops its copy when the COMMIT reaches it, which may be just after the
// agent finished further on: wait for that.
bool all_gone(std::vector<std::unique_ptr<Node>>& nodes) {
  for (int i = 0; i < 500; ++i) {
    bool none = std::all_of(nodes.begin(), nodes.end(), [](auto& n) { return n->stats().agents_resident == 0; });
    if (none) return true;
    std::this_thread::sleep_for(2ms);
  }
  return false;
}


constexpr const char* kTour = R"(
local M = {}
function M.start(s)
  s.seen = {}
  return M.visit(s)
end
function M.visit(s)
  s.seen[#s.seen + 1] = { node = agent.here, price = node.call("kv.get", "price") }
  local nxt = agent.itinerary[1]
  if nxt then agent.go(nxt, "visit") end
  return s.seen
end
return M
)";

Bundle tour_bundle() {
  auto b = single_file_bundle("tour", kTour, {"start", "visit"});
  REQUIRE(b.ok());
  return *b;
}

std::string launch(Node& from, const std::string& at, std::vector<std::string> itinerary, Bundle bundle = tour_bundle()) {
  AgentLaunch l;
  l.bundle = std::move(bundle);
  l.itinerary = std::move(itinerary);
  l.owner = "tester";
  auto id = from.launch(at, l);
  REQUIRE(id.ok());
  return *id;
}

}  // namespace

TEST_CASE("code-on-demand: a fetched module runs on local data and a second fetch sends no code") {
  Cluster c(2);
  REQUIRE(c[0].publish("stats", "local t = ... ; local s = 0; for _, v in ipairs(t) do s = s + v end;"
                                "return s / #t, node.call('kv.get', 'price')").ok());
  auto m = c[1].fetch(c.addr[0], "stats");
  REQUIRE(m.ok());
  CHECK_FALSE(m->from_cache);
  CHECK(m->bundle.manifest.name == "stats");
  auto r = c[1].run_module(*m, Value::array({Value::array({2, 4, 9})}));
  REQUIRE(r.ok());
  CHECK(r->get(1).as_number() == 5.0);
  CHECK(r->get(2).as_integer() == 110);  // the fetching node's own data
  CHECK(c[0].stats().bundles_sent == 1);
  auto again = c[1].fetch(c.addr[0], "stats");
  REQUIRE(again.ok());
  CHECK(again->from_cache);
  CHECK(again->hash == m->hash);
  CHECK(c[0].stats().bundles_sent == 1);
}

TEST_CASE("code-on-demand: module names that are paths and unknown modules are refused") {
  Cluster c(2);
  auto bad = c[1].fetch(c.addr[0], "../etc/passwd");
  REQUIRE_FALSE(bad.ok());
  CHECK_ERROR(bad, Errc::bad_bundle, "'../etc/passwd'");
  auto missing = c[1].fetch(c.addr[0], "nothing");
  REQUIRE_FALSE(missing.ok());
  CHECK_ERROR(missing, Errc::no_such_module, "nothing");
}

TEST_CASE("code-on-demand: a module whose code was changed after fetching is refused") {
  Cluster c(2);
  REQUIRE(c[0].publish("m", "return 1").ok());
  auto m = c[1].fetch(c.addr[0], "m");
  REQUIRE(m.ok());
  m->bundle.files["m.lua"] = "return 2";
  auto r = c[1].run_module(*m);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::hash_mismatch);
}

TEST_CASE("require_remote in a fetched module loads another module from its origin") {
  Cluster c(2);
  REQUIRE(c[0].publish("helpers", "return { double = function(x) return 2 * x end }").ok());
  REQUIRE(c[0].publish("main", "local h = require_remote('helpers'); return h.double(21)").ok());
  auto m = c[1].fetch(c.addr[0], "main");
  REQUIRE(m.ok());
  auto r = c[1].run_module(*m);
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 42);
}

TEST_CASE("a mobile agent tours three nodes and reports its result and itinerary home") {
  Cluster c(3);
  const std::string id = launch(c[0], c.addr[0], {c.addr[1], c.addr[2]});
  auto s = c[0].wait_agent(c.addr[0], id, 10s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::finished);
  Value seen = s->result.get(1);
  REQUIRE(seen.length() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(seen.get(i + 1).get("node").as_string() == c.addr[static_cast<std::size_t>(i)]);
    CHECK(seen.get(i + 1).get("price").as_integer() == 100 + 10 * i);
  }
  REQUIRE(s->hops.size() == 3);
  CHECK(s->hops[2].node == c.addr[2]);
  CHECK(s->hops[2].epoch == 2);
  CHECK(s->hops[2].state_bytes > 0);
  CHECK(s->location == c.addr[2]);
  CHECK(all_gone(c.nodes));
}

TEST_CASE("a lost COMMIT is retried and the destination answers with its earlier commit: one live copy") {
  std::atomic<int> dropped{0};
  Cluster c(3);
  sojourn::testing::set_fault_hooks(c[1], [&](std::string_view service) { return service == "agent.transfer" && dropped++ == 0; });
  // Counts runs at node 1: a second live copy would run the step twice.
  const char* source = R"(
    local M = {}
    function M.start(s) agent.go(agent.itinerary[1], "at_one") end
    function M.at_one(s)
      node.call("kv.put", "runs", (node.call("kv.get", "runs") or 0) + 1)
      agent.go(agent.itinerary[1], "done")
    end
    function M.done(s) return "ok" end
    return M)";
  auto bundle = single_file_bundle("once", source);
  REQUIRE(bundle.ok());
  const std::string id = launch(c[0], c.addr[0], {c.addr[1], c.addr[2]}, *bundle);
  auto s = c[0].wait_agent(c.addr[0], id, 10s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::finished);
  CHECK(dropped.load() >= 1);
  CHECK(c[1].call_local("kv.get", Value::array({"runs"}))->as_integer() == 1);
  REQUIRE(s->hops.size() == 3);
  CHECK(s->hops[1].node == c.addr[1]);
  CHECK(all_gone(c.nodes));
}

TEST_CASE("a duplicate TRANSFER is answered with the same COMMIT and makes no second agent") {
  Cluster c(2);
  // An agent that waits at node 1 (it stays resident: its entry never ends the tour).
  auto bundle = single_file_bundle("stay", "function start(s) agent.go(agent.itinerary[1], 'park') end\n"
                                           "function park(s) agent.go('127.0.0.1:1', 'never') end");
  REQUIRE(bundle.ok());
  auto cache_bytes = encode_bundle(*bundle);
  AgentTransfer transfer;
  AgentRecord& record = transfer.record;
  record.id = std::string(32, 'a');
  record.home = c.addr[0];
  record.owner = "t";
  record.bundle_hash = sha256_hex(cache_bytes);
  record.entry = "start";
  record.state = Value::table();
  record.epoch = 1;
  record.itinerary = {c.addr[0]};
  record.max_hops = 1;
  transfer.bundle_bytes = std::string(cache_bytes.begin(), cache_bytes.end());
  // What every TRANSFER carries against replays: its destination, a nonce and an expiry.
  transfer.to = c[1].node_id();
  transfer.nonce = std::string(32, '7');
  transfer.expires_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch() + 30s).count();
  auto first = c[0].call(c.addr[1], "agent.transfer", transfer_call_args(transfer));
  REQUIRE(first.ok());
  auto second = c[0].call(c.addr[1], "agent.transfer", transfer_call_args(transfer));
  REQUIRE(second.ok());
  CHECK(deep_equal(*first, *second));
  auto commit = decode_message<AgentCommit, decode_commit>(*first, "the COMMIT");
  REQUIRE(commit.ok());
  CHECK(commit->id == record.id);
  CHECK(commit->epoch == 1);
  // An older epoch is refused.
  record.epoch = 0;
  auto stale = c[0].call(c.addr[1], "agent.transfer", transfer_call_args(transfer));
  REQUIRE_FALSE(stale.ok());
  CHECK(stale.error().code == Errc::stale_epoch);
}

TEST_CASE("an unreachable next hop leaves the agent where it is, stranded, with the reason") {
  Cluster c(1);
  const std::string dead = "127.0.0.1:1";  // nothing listens on port 1
  const std::string id = launch(c[0], c.addr[0], {dead});
  auto s = c[0].wait_agent(c.addr[0], id, 10s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::stranded);
  // The reason code can read names no OS error (the node's log has it): destination_test.cpp.
  CHECK(s->reason == "cannot move agent " + id + " to " + dead + ": destination unreachable");
  auto residents = c[0].list_agents();
  REQUIRE(residents.ok());
  REQUIRE(residents->size() == 1);
  CHECK((*residents)[0].id == id);
  CHECK((*residents)[0].status == AgentState::stranded);
  CHECK((*residents)[0].reason.rfind("cannot move agent", 0) == 0);
}

TEST_CASE("messages to a moving agent arrive exactly once and in order") {
  Cluster c(3);
  // Hops between nodes 1 and 2 until it has received every message, then returns them.
  const char* source = R"(
    local M = {}
    function M.start(s) s.got = {}; s.hops = 0; s.stops = { agent.itinerary[1], agent.itinerary[2] }; return M.roam(s) end
    function M.roam(s)
      while true do
        local m = agent.receive()
        if m == nil then break end
        s.got[#s.got + 1] = m
      end
      if #s.got >= s.want or s.hops >= 400 then return s.got end
      s.hops = s.hops + 1
      local i = s.hops % 2 + 1
      agent.go(s.stops[i], "roam")
    end
    return M)";
  auto bundle = single_file_bundle("roamer", source);
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {c.addr[1], c.addr[2]};
  l.state = Value::table();
  l.state.set("want", 20);
  l.max_hops = 1000;
  auto id = c[0].launch(c.addr[0], l);
  REQUIRE(id.ok());
  for (int i = 0; i < 20; ++i) {
    auto sent = c[0].send_to_agent(c.addr[0], *id, Value(i));
    REQUIRE(sent.ok());
    std::this_thread::sleep_for(1ms);
  }
  auto s = c[0].wait_agent(c.addr[0], *id, 20s);
  REQUIRE(s.ok());
  REQUIRE(s->status == AgentState::finished);
  Value got = s->result.get(1);
  REQUIRE(got.length() == 20);
  for (int i = 0; i < 20; ++i) CHECK(got.get(i + 1).as_integer() == i);
}

TEST_CASE("closures sharing an upvalue travel with the state across three hops and still share it") {
  Cluster c(4);
  const char* source = R"(
    local M = {}
    function M.start(s)
      local count = 0
      s.bump = function(by) count = count + by; return count end
      s.peek = function() return count end
      s.fact = nil
      local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end
      s.fact = fact
      s.bump(1)
      return M.visit(s)
    end
    function M.visit(s)
      s.bump(10)
      local nxt = agent.itinerary[1]
      if nxt then agent.go(nxt, "visit") end
      return s.peek(), s.fact(5), agent.epoch
    end
    return M)";
  auto bundle = single_file_bundle("closures", source);
  REQUIRE(bundle.ok());
  const std::string id = launch(c[0], c.addr[0], {c.addr[1], c.addr[2], c.addr[3]}, *bundle);
  auto s = c[0].wait_agent(c.addr[0], id, 10s);
  REQUIRE(s.ok());
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_integer() == 41);  // 1 + 10 at each of four nodes, one shared count
  CHECK(s->result.get(2).as_integer() == 120);
  CHECK(s->result.get(3).as_integer() == 3);
}

TEST_CASE("an agent whose state holds a C function is refused with the field's path, and the node lives") {
  Cluster c(2);
  auto bundle = single_file_bundle("bad", "function start(s) s.it = string.gmatch('a b', '%a') ; agent.go(agent.itinerary[1], 'start') end");
  REQUIRE(bundle.ok());
  const std::string id = launch(c[0], c.addr[0], {c.addr[1]}, *bundle);
  auto s = c[0].wait_agent(c.addr[0], id, 10s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::failed);
  CHECK(s->reason == "value at state.it cannot travel: a C function");
  CHECK(c[0].call(c.addr[1], "kv.get", Value::array({"price"}))->as_integer() == 110);
}

TEST_CASE("a late COMMIT drops only the departed copy, not the agent that has come back since") {
  // Node 2 holds its COMMITs back: the agent goes 1 -> 2 -> 1 and parks at node 1 before
  // node 1 reads the COMMIT of its departure to node 2. That COMMIT must not erase it.
  Cluster c(3);
  sojourn::testing::set_fault_hooks(c[2], {}, [](std::string_view service) {
    return service == "agent.transfer" ? std::chrono::milliseconds(150) : std::chrono::milliseconds(0);
  });
  const char* source = R"(
    local M = {}
    function M.start(s) s.one, s.two = agent.itinerary[1], agent.itinerary[2]; agent.go(s.one, "to_two") end
    function M.to_two(s) agent.go(s.two, "back") end
    function M.back(s) agent.go(s.one, "park") end
    function M.park(s)
      local m = agent.receive()
      if m == nil then agent.wait("park") end
      return m, agent.epoch
    end
    return M)";
  auto bundle = single_file_bundle("returner", source);
  REQUIRE(bundle.ok());
  sojourn::test::LogWatch watch;  // node 1 logs the held-back COMMIT when it reads it
  const std::string id = launch(c[0], c.addr[0], {c.addr[1], c.addr[2]}, *bundle);
  REQUIRE(watch.wait_for("n1: agent " + id + " moved to " + c.addr[2] + " (epoch 2)", 10s));
  REQUIRE(c[0].send_to_agent(c.addr[0], id, Value("wake up")).ok());
  auto s = c[0].wait_agent(c.addr[0], id, 10s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_string() == "wake up");
  CHECK(s->result.get(2).as_integer() == 3);
  CHECK(all_gone(c.nodes));
}

TEST_CASE("agents run in the strongest jail by default, at the trusted level where the operator says so, never weaker") {
  // Node 1 trusts its peers; nodes 0 and 2 jail them. The agent keeps the strongest level.
  Cluster c(3, [](int i, NodeOptions& o) {
    if (i == 1) o.peer_isolation = Isolation::trusted;
  });
  // process here; microvm on a host whose KVM runs the guest (microvm_node_test covers that).
  const std::string strongest(isolation_name(c[0].peer_isolation()));
  CHECK(strongest != "trusted");
  const std::string id = launch(c[0], c.addr[0], {c.addr[1], c.addr[2]});
  auto s = c[0].wait_agent(c.addr[0], id, 10s);
  REQUIRE(s.ok());
  REQUIRE(s->status == AgentState::finished);
  REQUIRE(s->hops.size() == 3);
  for (const auto& hop : s->hops) CHECK(hop.isolation == strongest);

  Cluster trusting(2, [](int, NodeOptions& o) { o.peer_isolation = Isolation::trusted; });
  const std::string fast = launch(trusting[0], trusting.addr[0], {trusting.addr[1]});
  auto t = trusting[0].wait_agent(trusting.addr[0], fast, 10s);
  REQUIRE(t.ok());
  REQUIRE(t->status == AgentState::finished);
  for (const auto& hop : t->hops) CHECK(hop.isolation == "trusted");
  CHECK(t->result.get(1).length() == 2);
}

TEST_CASE("a holder that never had its home's answer to an arrival still reports the later hops and the end") {
  // The home takes each arrival report at node 1 (storing the token it hands back) and its
  // answer is lost every time, as when the home is killed after storing it: the agent goes on
  // with the token before. Its later reports show that token; the home takes them until the
  // token it handed back has been shown.
  std::atomic<int> dropped{0};
  Cluster c(3);
  sojourn::testing::set_fault_hooks(c[0], [&](std::string_view service) { return service == "agent.arrived" && dropped++ < 3; });
  const std::string id = launch(c[0], c.addr[0], {c.addr[1], c.addr[2]});
  auto s = c[0].wait_agent(c.addr[0], id, 10s);
  REQUIRE(s.ok());
  INFO(s->reason);
  CHECK(s->status == AgentState::finished);
  // One report per hop (epochs 1 and 2), each answer lost; a report may be sent again
  // before the agent moves on, but a fast agent leaves first (the report is not waited for).
  CHECK(dropped.load() >= 2);
  CHECK(s->epoch == 2);
  CHECK(s->location == c.addr[2]);
}

TEST_CASE("a hop sends the code only to a node that asks for it: once per node, then never again") {
  Cluster c(2);
  // Two tours of node 1 with the same code: the first TRANSFER is answered with a BundleWanted
  // (then sent again with the code), the second with the COMMIT at once.
  for (int round = 1; round <= 2; ++round) {
    const std::string id = launch(c[0], c.addr[0], {c.addr[1]});
    auto s = c[0].wait_agent(c.addr[0], id, 30s);
    REQUIRE(s.ok());
    INFO(s->reason);
    REQUIRE(s->status == AgentState::finished);
    CHECK(c[0].stats().bundles_sent == 1);
  }
  CHECK(c[1].stats().bundles_cached == 1);
}

TEST_CASE("a node of the older agent protocol is named as such: the agent stays, and an old OFFER is refused") {
  Cluster c(2);
  // Node 1 answers a TRANSFER as a protocol 6 node does (its decoder refuses version 7).
  c[1].register_service("agent.transfer", [](const Value&) -> Result<Value> {
    return errors::invalid_argument("bad agent message: transfer: agent protocol version 7 (this node speaks 6)");
  });
  const std::string id = launch(c[0], c.addr[0], {c.addr[1]});
  AgentStatus status;
  for (int i = 0; i < 1500; ++i) {
    auto s = c[0].agent_status(c.addr[0], id);
    REQUIRE(s.ok());
    status = *s;
    if (status.status == AgentState::stranded || status.done()) break;
    std::this_thread::sleep_for(20ms);
  }
  CHECK(status.status == AgentState::stranded);
  CHECK(status.location == c.addr[0]);
  CHECK(status.reason == "cannot move agent " + id + " to " + c.addr[1] + ": unsupported protocol version: peer " + c.addr[1] +
                             " does not speak agent protocol 7 (invalid argument: bad agent message: transfer: agent "
                             "protocol version 7 (this node speaks 6))");
  // A protocol 3 source's OFFER: refused with the reason, nothing taken.
  auto offered = c[0].call(c.addr[1], "agent.offer", message_args(std::vector<std::uint8_t>{0, 3, 3}));
  REQUIRE_FALSE(offered.ok());
  CHECK(offered.error().code == Errc::bad_version);
  CHECK(offered.error().message == "unsupported protocol version 3 (this node speaks agent protocol 7, where a hop is a "
                                   "TRANSFER with no OFFER before it)");
}

TEST_CASE("an arrival report that reaches the home after the agent moved on changes nothing and locks nobody out") {
  Cluster c(3);
  // Parks at node 2 (epoch 2) until a message comes, then returns it.
  auto bundle = single_file_bundle("parker", R"(
    local M = {}
    function M.start(s) agent.go(agent.itinerary[1], "pass") end
    function M.pass(s) agent.go(agent.itinerary[1], "park") end
    function M.park(s)
      local m = agent.receive()
      if m == nil then return agent.wait("park") end
      return m
    end
    return M)");
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {c.addr[1], c.addr[2]};
  auto id = c[0].launch(c.addr[0], l);
  REQUIRE(id.ok());
  AgentStatus before;
  for (int i = 0; i < 1500; ++i) {
    auto s = c[0].agent_status(c.addr[0], *id);
    REQUIRE(s.ok());
    before = *s;
    if (before.epoch == 2) break;
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE(before.epoch == 2);
  // Node 1's report of epoch 1, late (as when it was sent beside a step that moved the agent
  // on at once): taken without an error, handing nothing over and moving nothing.
  ArrivalReport late;
  late.id = *id;
  late.epoch = 1;
  late.node = c.addr[1];
  late.state = AgentState::running;
  late.token = std::string(32, '0');
  auto answered = c[1].call(c.addr[0], "agent.arrived", message_args(encode(late)));
  REQUIRE(answered.ok());
  auto answer = decode_message<ArrivalAnswer, decode_arrival_answer>(*answered, "the arrival's answer");
  REQUIRE(answer.ok());
  CHECK(answer->messages.empty());
  CHECK(answer->token.empty());
  auto after = c[0].agent_status(c.addr[0], *id);
  REQUIRE(after.ok());
  CHECK(after->epoch == 2);
  CHECK(after->location == c.addr[2]);
  // The holder still reaches its home: a message wakes it and its end is taken.
  REQUIRE(c[0].send_to_agent(c.addr[0], *id, Value("hello")).ok());
  auto s = c[0].wait_agent(c.addr[0], *id, 30s);
  REQUIRE(s.ok());
  INFO(s->reason);
  CHECK(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_string() == "hello");
}

TEST_CASE("after a long tour the home holds every hop in order, though each TRANSFER carried only the last ones") {
  Cluster c(3);
  const char* source = R"(
    local M = {}
    function M.start(s) s.stops = { agent.itinerary[1], agent.itinerary[2] }; return M.hop(s) end
    function M.hop(s)
      s.left = s.left - 1
      if s.left < 0 then return agent.here end
      local a, b = s.stops[1], s.stops[2]
      s.stops[1], s.stops[2] = b, a
      agent.go(a, "hop")
    end
    return M)";
  auto bundle = single_file_bundle("bouncer", source);
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {c.addr[1], c.addr[2]};
  l.state = Value::table();
  l.state.set("left", 40);
  l.max_hops = 40;  // the budget still counts every hop (epoch), not the hops a record carries
  auto id = c[0].launch(c.addr[0], l);
  REQUIRE(id.ok());
  auto s = c[0].wait_agent(c.addr[0], *id, 30s);
  REQUIRE(s.ok());
  REQUIRE(s->status == AgentState::finished);
  REQUIRE(s->hops.size() == 41);
  for (std::size_t i = 0; i < s->hops.size(); ++i) {
    CHECK(s->hops[i].epoch == i);
    CHECK(s->hops[i].node == (i == 0 ? c.addr[0] : c.addr[i % 2 == 1 ? 1 : 2]));
  }

  // One hop more than its budget: it fails at the 41st hand-over, and its home says where.
  l.state.set("left", 41);
  auto over = c[0].launch(c.addr[0], l);
  REQUIRE(over.ok());
  auto f = c[0].wait_agent(c.addr[0], *over, 30s);
  REQUIRE(f.ok());
  CHECK(f->status == AgentState::failed);
  CHECK(f->reason.find("ran out of its hop budget of 40 hops") != std::string::npos);
  CHECK(f->hops.size() == 41);
  CHECK(all_gone(c.nodes));
}
