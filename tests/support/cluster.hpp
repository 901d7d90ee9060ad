// Test support: nodes on loopback TCP with local data, and an agent that spends a known amount
// of CPU per step, for the mobility, trust and microVM tests.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sojourn/agents/node.hpp"

namespace sojourn::test {

// The system clock in Unix ms; tests add a skew to it for NodeOptions::expiry_clock.
inline std::int64_t unix_now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// Nodes n0..n{n-1} on 127.0.0.1, each with kv "price" = 100 + 10 * i; `tweak` adjusts options.
struct Cluster {
  std::vector<std::unique_ptr<Node>> nodes;
  std::vector<std::string> addr;
  explicit Cluster(int n, std::function<void(int, NodeOptions&)> tweak = {}) {
    for (int i = 0; i < n; ++i) {
      NodeOptions o;
      o.name = "n" + std::to_string(i);
      o.retry_backoff = std::chrono::milliseconds(10);
      if (tweak) tweak(i, o);
      nodes.push_back(std::make_unique<Node>(o));
      auto bound = nodes.back()->listen("127.0.0.1:0");
      REQUIRE(bound.ok());
      addr.push_back(*bound);
      REQUIRE(nodes.back()->call_local("kv.put", Value::array({"price", 100 + 10 * i})).ok());
    }
  }
  Node& operator[](int i) { return *nodes[static_cast<std::size_t>(i)]; }
};

// About 60,000 Lua instructions a step, then on to the next stop of its itinerary.
inline constexpr const char* kBurner = R"(
function start(s) return hop(s) end
function hop(s)
  local x = 0
  for i = 1, 30000 do x = x + i end
  s.visits = (s.visits or 0) + 1
  local nxt = agent.itinerary[1]
  if nxt then agent.go(nxt, "hop") end
  return s.visits
end
)";

}  // namespace sojourn::test
