// Test support for the durable tests: an agent launched from its home to one node, where it
// parks (asleep in that node's store), and the wait for a node to hold it in a given state.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"

namespace sojourn::test {

// True once `node` holds exactly one agent, in `state`; false after about 10 s.
inline bool holds_one(Node& node, AgentState state) {
  for (int i = 0; i < 1000; ++i) {
    auto agents = node.list_agents();
    if (agents.ok() && agents->size() == 1 && (*agents)[0].status == state) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// Launches `bundle` from `home` with `host` as its itinerary (its start entry goes there and
// waits) and returns the agent's id once `host` holds it asleep.
inline std::string launch_parked(Node& home, Node& host, const Bundle& bundle, Value state = {}) {
  AgentLaunch l;
  l.bundle = bundle;
  l.state = std::move(state);
  l.itinerary = {host.advertised_address()};
  auto launched = home.launch(home.advertised_address(), l);
  REQUIRE_MESSAGE(launched.ok(), (launched.ok() ? "" : launched.error().message));
  REQUIRE(holds_one(host, AgentState::asleep));
  return *launched;
}

}  // namespace sojourn::test
