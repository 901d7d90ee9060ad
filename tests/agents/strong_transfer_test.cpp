// Strong mobility between nodes (issue 13) with large images: one larger than a frame travels
// in pieces (a weak TRANSFER over the frame limit is refused), and a 64 MB heap arrives intact.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "sojourn/agents/node.hpp"
#include "tests/agents/strong_support.hpp"
#include "tests/support/cluster.hpp"

using namespace sojourn;
using namespace sojourn::strong_test;
using namespace std::chrono_literals;
using sojourn::test::Cluster;

TEST_CASE("an image larger than a frame travels in pieces, and a TRANSFER over the frame limit is refused") {
  Cluster c(2, [](int, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.max_payload = 8u << 10;  // below any heap image (a bare heap seals to ~20 KB)
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::finished);
  CHECK(s.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
  REQUIRE(s.hops.size() == 2);
  CHECK(s.hops[0].image_bytes > (8u << 10));  // it could not have ridden in one frame
  // A weak agent's state is the TRANSFER itself: past the frame limit it is refused before it
  // is sent, and the agent stays at its source.
  AgentLaunch weak;
  weak.bundle = bundle_of(R"(function start(s) s.blob = string.rep("x", 20000) agent.go(s.stops[1], "later") end
function later(s) return #s.blob end)");
  weak.state = state;
  auto weak_id = c[0].launch({}, weak);
  REQUIRE(weak_id.ok());
  AgentStatus w = wait_stranded(c[0], *weak_id);
  CHECK(w.status == AgentState::stranded);
  CHECK(w.reason.find("bytes, over the frame limit of 8192 bytes (max_payload)") != std::string::npos);
  CHECK(c[1].stats().agents_resident == 0);
}

TEST_CASE("a 64 MB heap moves between two nodes and arrives intact") {
  Cluster c = strong_cluster(2);
  // 64 Ki strings of ~1 KB: 1 KB pieces of pseudo-random hex digits, each used again only
  // 1 MB further on (beyond zstd's window at the image's level), so the image stays well
  // over one 16 MB frame. A checksum taken before the move is compared after it.
  Bundle b = bundle_of(R"(
function start(s)
  local blocks = {}
  for k = 1, 1024 do
    local piece = {}
    for j = 1, 128 do piece[j] = string.format("%08x", math.random(0, 2147483647)) end
    blocks[k] = table.concat(piece)
  end
  local big = {}
  for i = 1, 65536 do big[i] = blocks[i % 1024 + 1] .. i end
  local function checksum()
    local sum = 0
    for i = 1, #big do sum = (sum + big[i]:byte(1 + i % 1000) * i + #big[i]) % 2147483647 end
    return sum
  end
  local before = checksum()
  agent.go(s.stops[1])
  local bad, bytes = 0, 0
  for i = 1, #big do
    bytes = bytes + #big[i]
    if big[i] ~= blocks[i % 1024 + 1] .. i then bad = bad + 1 end
  end
  return #big .. ":" .. bad .. ":" .. bytes .. ":" .. tostring(checksum() == before) .. "@" .. agent.here
end)");
  b.manifest.quotas.memory_bytes = 192u << 20;
  b.manifest.quotas.wall_ms = 60'000;  // a loaded sanitizer run: the first step alone may take seconds
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], b, state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  REQUIRE_MESSAGE(s.status == AgentState::finished, s.reason);
  std::uint64_t bytes = 0;
  for (int i = 1; i <= 65536; ++i) bytes += 1024 + std::to_string(i).size();
  CHECK(s.result.get(1).as_string() == "65536:0:" + std::to_string(bytes) + ":true@" + c.addr[1]);
  REQUIRE(s.hops.size() == 2);
  CHECK(s.hops[0].image_raw_bytes > (64u << 20));
  CHECK(s.hops[0].image_bytes > (16u << 20));  // over the default frame limit: sent in pieces
}
