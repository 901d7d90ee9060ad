// Nodes whose peer code runs in microVMs: with the default options a node on a host whose
// KVM runs the guest picks the microvm level by itself, and remote evaluation and a mobile
// agent's tour (closures in its state) work end to end through it; a strong agent is handed
// between a node of the process jail and a node of microVMs, both ways. Needs /dev/kvm: it runs
// in kvm_tests (nested QEMU where the host has no usable KVM), over TCP on the guest's loopback.
#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/signature.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Cluster;

namespace {

// Emulated KVM is slow: generous request timeouts.
void patient(int, NodeOptions& o) {
  o.retry_backoff = 20ms;
  o.request_timeout = 60s;
}


constexpr const char* kTour = R"(
local M = {}
function M.start(s)
  local count = 0
  s.bump = function() count = count + 1; return count end
  s.seen = {}
  return M.visit(s)
end
function M.visit(s)
  s.seen[#s.seen + 1] = { node = agent.here, price = node.call("kv.get", "price"), n = s.bump() }
  local nxt = agent.itinerary[1]
  if nxt then agent.go(nxt, "visit") end
  return s.seen
end
return M
)";

// A strong agent: agent.go(peer) without an entry, and the next line runs on the peer with the
// loop's locals, a closure's shared upvalue and a half-used generator as they were.
constexpr const char* kStrongTour = R"(
function start(s)
  local count = 0
  local function bump() count = count + 1 return count end
  local function peek() return count end
  local gen = coroutine.wrap(function() for i = 1, 10 do coroutine.yield(i * i) end end)
  local seen = {}
  for _, stop in ipairs(s.stops) do
    local before, n = bump(), gen()
    agent.go(stop)
    seen[#seen + 1] = { at = agent.here, n = n, count = before + bump() + peek(),
                        price = node.call("kv.get", "price"), level = node.call("node.info").peer_isolation }
  end
  return seen
end
)";

}  // namespace

TEST_CASE("a node with default options runs peer code in microVMs where KVM can run the guest") {
  Cluster c(2, patient);
  const IsolationLevels levels = c[1].isolation_levels();
  INFO("levels missing: " << levels.why_missing());
  REQUIRE(levels.has(Isolation::microvm));
  CHECK(c[1].peer_isolation() == Isolation::microvm);

  auto r = c[0].eval(c.addr[1], "local info = node.call('node.info') return info.name, info.peer_isolation, 6 * 7");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->isolation == Isolation::microvm);
  CHECK(r->results.get(1).as_string() == "n1");
  CHECK(r->results.get(2).as_string() == "microvm");
  CHECK(r->results.get(3).as_integer() == 42);

  // Hostile code ends with its error and the node serves the next request.
  EvalOptions tight;
  tight.limits = Limits{100'000, 8u << 20, 2000};
  auto spin = c[0].eval(c.addr[1], "while true do end", Value::table(), tight);
  REQUIRE_FALSE(spin.ok());
  CHECK_ERROR(spin, Errc::cpu_limit, "100000 instructions");
  auto next = c[0].eval(c.addr[1], "return 'alive'");
  REQUIRE(next.ok());
  CHECK(next->results.get(1).as_string() == "alive");
}

TEST_CASE("a mobile agent tours three nodes in microVMs, its closure's shared count intact") {
  Cluster c(3, patient);
  auto bundle = single_file_bundle("tour", kTour, {"start", "visit"});
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {c.addr[1], c.addr[2]};
  l.owner = "tester";
  auto id = c[0].launch(c.addr[0], l);
  REQUIRE(id.ok());
  auto s = c[0].wait_agent(c.addr[0], *id, 120s);
  REQUIRE_MESSAGE(s.ok(), (s.ok() ? "" : s.error().message));
  INFO("status " << s->status << ": " << s->reason);
  REQUIRE(s->status == AgentState::finished);
  Value seen = s->result.get(1);
  REQUIRE(seen.length() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(seen.get(i + 1).get("node").as_string() == c.addr[static_cast<std::size_t>(i)]);
    CHECK(seen.get(i + 1).get("price").as_integer() == 100 + 10 * i);
    CHECK(seen.get(i + 1).get("n").as_integer() == i + 1);
  }
  REQUIRE(s->hops.size() == 3);
  for (const auto& hop : s->hops) CHECK(hop.isolation == "microvm");
}

TEST_CASE("a signed agent's CPU budget travels and is enforced in microVMs: it ends where it ran out") {
  // Charged by the guest's count alone: under the nested VM's emulated CPU the measured CPU
  // time is far above native (microvm_jail_test checks that it is measured at all).
  Cluster c(3, [](int i, NodeOptions& o) {
    patient(i, o);
    o.instructions_per_cpu_ms = 0;
  });
  auto owner = SigningKey::generate();
  REQUIRE(owner.ok());
  auto bundle = single_file_bundle("burner", sojourn::test::kBurner, {"start", "hop"});
  REQUIRE(bundle.ok());
  // ~60,000 instructions a step, counted inside the microVM: two steps fit, the third does not.
  bundle->manifest.cpu_budget = 150'000;
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {c.addr[1], c.addr[2], c.addr[1]};
  l.signing_key = std::make_shared<const SigningKey>(std::move(*owner));
  auto id = c[0].launch(c.addr[0], l);
  REQUIRE(id.ok());
  auto s = c[0].wait_agent(c.addr[0], *id, 120s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::failed);
  CHECK(s->reason == "agent " + *id + " ran out of its CPU budget of 150000 instructions (at " + c.addr[2] + ")");
  REQUIRE(s->hops.size() == 3);
  for (const auto& hop : s->hops) CHECK(hop.isolation == "microvm");
}

TEST_CASE("a strong agent goes from a process-jail node to a microVM node and on to a process-jail node, at the next line") {
  // n0 and n2 run peers' code in the process jail, n1 in microVMs. The agent starts in n0's
  // process jail; its image, taken there, resumes in a microVM on n1; the image n1 takes in
  // the microVM resumes on n2, which runs it in a microVM too: a node may strengthen an
  // agent's jail, never weaken it. Images cross between the two jails in both directions.
  Cluster c(3, [](int i, NodeOptions& o) {
    patient(i, o);
    o.peer_isolation = i == 1 ? Isolation::microvm : Isolation::process;
  });
  REQUIRE(c[1].isolation_levels().has(Isolation::microvm));
  auto bundle = single_file_bundle("strong_tour", kStrongTour, {"start"});
  REQUIRE(bundle.ok());
  bundle->manifest.quotas.wall_ms = 60'000;  // an emulated CPU restores an image slowly
  AgentLaunch l;
  l.bundle = *bundle;
  l.state = Value::table();
  l.state.set("stops", Value::array({c.addr[1], c.addr[2]}));
  l.owner = "tester";
  l.mobility = Mobility::strong;
  auto id = c[0].launch(c.addr[0], l);
  REQUIRE_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
  auto s = c[0].wait_agent(c.addr[0], *id, 240s);
  REQUIRE_MESSAGE(s.ok(), (s.ok() ? "" : s.error().message));
  INFO("status " << agent_state_name(s->status) << ": " << s->reason);
  REQUIRE(s->status == AgentState::finished);
  Value seen = s->result.get(1);
  REQUIRE(seen.length() == 2);
  CHECK(seen.get(1).get("at").as_string() == c.addr[1]);
  CHECK(seen.get(1).get("n").as_integer() == 1);
  CHECK(seen.get(1).get("count").as_integer() == 1 + 2 + 2);  // bump before, bump after, peek: one cell
  CHECK(seen.get(1).get("price").as_integer() == 110);
  CHECK(seen.get(1).get("level").as_string() == "microvm");
  CHECK(seen.get(2).get("at").as_string() == c.addr[2]);
  CHECK(seen.get(2).get("n").as_integer() == 4);
  CHECK(seen.get(2).get("count").as_integer() == 3 + 4 + 4);
  CHECK(seen.get(2).get("price").as_integer() == 120);
  CHECK(seen.get(2).get("level").as_string() == "process");  // the node's own level for peers
  REQUIRE(s->hops.size() == 3);
  CHECK(s->hops[0].isolation == "process");
  CHECK(s->hops[1].isolation == "microvm");
  CHECK(s->hops[2].isolation == "microvm");
  for (const auto& hop : s->hops) CHECK(hop.mobility == "strong");
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(s->hops[i].image_bytes > 0);
    CHECK(s->hops[i + 1].state_bytes == s->hops[i].image_bytes);  // what arrived is the image it left with
    CHECK(s->hops[i + 1].restore_us > 0);
  }
  CHECK(s->epoch == 2);
}
