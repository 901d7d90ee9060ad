// Shared by the strong mobility tests between nodes (strong_mobility_test, strong_image_refusal_test,
// strong_policy_test, strong_transfer_test): nodes whose peers' code runs in the process jail,
// a strong launch, and waits for an agent's end or its stranding.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <utility>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"
#include "tests/support/cluster.hpp"

namespace sojourn::strong_test {

// Nodes whose code from peers runs in the process jail (the strong agents' level here).
inline test::Cluster strong_cluster(int n, Isolation level_of_last = Isolation::process) {
  return test::Cluster(n, [n, level_of_last](int i, NodeOptions& o) {
    o.peer_isolation = i == n - 1 ? level_of_last : Isolation::process;
  });
}

inline Bundle bundle_of(const char* source, std::uint64_t cpu_budget = 0) {
  auto b = single_file_bundle("strong", source, {"start"});
  REQUIRE(b.ok());
  b->manifest.cpu_budget = cpu_budget;
  return *b;
}

inline Result<std::string> launch_strong(Node& at, Bundle bundle, Value state = Value::table()) {
  AgentLaunch l;
  l.bundle = std::move(bundle);
  l.state = std::move(state);
  l.owner = "tester";
  l.mobility = Mobility::strong;
  return at.launch({}, std::move(l));
}

inline AgentStatus run_to_end(Node& home, const std::string& id) {
  auto s = home.wait_agent({}, id, std::chrono::seconds(50));
  REQUIRE(s.ok());
  REQUIRE_MESSAGE(s->done(), "agent " << id << " is " << agent_state_name(s->status) << ": " << s->reason);
  return *s;
}

// Polls the home until the agent is stranded (a refused hand-over), or gives up.
inline AgentStatus wait_stranded(Node& home, const std::string& id) {
  for (int i = 0; i < 1000; ++i) {
    auto s = home.agent_status({}, id);
    REQUIRE(s.ok());
    if (s->status == AgentState::stranded || s->done()) return *s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  FAIL("agent " << id << " never stranded");
  return {};
}

// One strong hop to s.stops[1], with a local table carried over.
inline constexpr const char* kHop = R"(
function start(s)
  local t = { 1, 2, 3 }
  agent.go(s.stops[1])
  return "ok " .. #t .. " at " .. agent.here
end
)";

// The guest binary of this build ($SOJOURN_GUEST, set by ctest).
inline const char* guest_path() {
  const char* guest = std::getenv("SOJOURN_GUEST");
  REQUIRE(guest != nullptr);
  return guest;
}

}  // namespace sojourn::strong_test
