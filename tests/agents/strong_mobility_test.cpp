// Strong mobility between real nodes on loopback (issue 13): agents launched strong run in the
// process jail, agent.go(peer) without an entry hands their heap image over with the
// exactly-once OFFER/TRANSFER/COMMIT, and they go on at the next line on the peer. Hostile
// images (tampered, from another guest build, corrupt but well hashed) are refused or kill
// only their own guest.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "agents/agent_messages.hpp"  // agents/: the image pieces
#include "agents/node_testing.hpp"  // agents/: the image hook
#include "sandbox/image/heap_image.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/bundle.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/trust_nodes.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Cluster;
namespace image = sojourn::sandbox::image;

namespace {

// Nodes whose code from peers runs in the process jail (the strong agents' level here).
Cluster strong_cluster(int n, Isolation level_of_last = Isolation::process) {
  return Cluster(n, [n, level_of_last](int i, NodeOptions& o) {
    o.peer_isolation = i == n - 1 ? level_of_last : Isolation::process;
  });
}

Bundle bundle_of(const char* source, std::uint64_t cpu_budget = 0) {
  auto b = single_file_bundle("strong", source, {"start"});
  REQUIRE(b.ok());
  b->manifest.cpu_budget = cpu_budget;
  return *b;
}

Result<std::string> launch_strong(Node& at, Bundle bundle, Value state = Value::table()) {
  AgentLaunch l;
  l.bundle = std::move(bundle);
  l.state = std::move(state);
  l.owner = "tester";
  l.mobility = Mobility::strong;
  return at.launch({}, std::move(l));
}

AgentStatus run_to_end(Node& home, const std::string& id) {
  auto s = home.wait_agent({}, id, 50s);
  REQUIRE(s.ok());
  REQUIRE_MESSAGE(s->done(), "agent " << id << " is " << agent_state_name(s->status) << ": " << s->reason);
  return *s;
}

// Polls the home until the agent is stranded (a refused hand-over), or gives up.
AgentStatus wait_stranded(Node& home, const std::string& id) {
  for (int i = 0; i < 1000; ++i) {
    auto s = home.agent_status({}, id);
    REQUIRE(s.ok());
    if (s->status == AgentState::stranded || s->done()) return *s;
    std::this_thread::sleep_for(10ms);
  }
  FAIL("agent " << id << " never stranded");
  return {};
}

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

constexpr const char* kHop = R"(
function start(s)
  local t = { 1, 2, 3 }
  agent.go(s.stops[1])
  return "ok " .. #t .. " at " .. agent.here
end
)";

const char* guest_path() {
  const char* guest = std::getenv("SOJOURN_GUEST");
  REQUIRE(guest != nullptr);
  return guest;
}

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

// A strong hop from node 0 to node 1 whose sealed image has byte `at(size)` flipped on the way:
// the agent is stranded at its source by the image's hash, and nothing is resident at node 1.
static void check_tampered_hop_refused(Cluster& c, const Value& state, std::size_t (*at)(std::size_t)) {
  testing::set_image_hook(c[0], [at](std::vector<std::uint8_t>& bytes, std::string&) { bytes[at(bytes.size())] ^= 0x01; });
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  AgentStatus s = wait_stranded(c[0], *id);
  CHECK(s.status == AgentState::stranded);
  CHECK(s.reason.find("heap image hash mismatch") != std::string::npos);
  CHECK(c[1].stats().agents_resident == 0);
  testing::set_image_hook(c[0], nullptr);
}

TEST_CASE("a tampered image is refused by its hash and the agent stays at its source") {
  Cluster c = strong_cluster(2);
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  check_tampered_hop_refused(c, state, [](std::size_t size) { return size - 1; });
}

TEST_CASE("a piece tampered on the way is refused by the image's hash before the guest runs") {
  // Frames of 8 KB: the image (~20 KB) goes in 4 KB pieces.
  Cluster c(2, [](int, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.max_payload = 8u << 10;
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  check_tampered_hop_refused(c, state, [](std::size_t size) { return size / 2; });
  // The destination keeps serving: an honest image of the same size moves.
  auto next = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(next.ok());
  AgentStatus n = run_to_end(c[0], *next);
  CHECK(n.status == AgentState::finished);
  CHECK(n.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
}

TEST_CASE("an image from another guest build is refused by name and the agent stays at its source") {
  Cluster c = strong_cluster(2);
  testing::set_image_hook(c[0], [](std::vector<std::uint8_t>& bytes, std::string& sha256) {
    for (std::size_t i = 16; i < 48; ++i) bytes[i] = 0x22;  // the build id field (format 2)
    image::reseal(bytes);
    sha256 = sha256_hex(bytes);
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  // Refused at the TRANSFER: the agent is not lost, it stays at its source.
  AgentStatus s = wait_stranded(c[0], *id);
  CHECK(s.status == AgentState::stranded);
  CHECK(s.reason.find("image from guest build 2222222222222222, this node runs ") != std::string::npos);
  CHECK(c[1].stats().agents_resident == 0);
  CHECK(c[0].stats().agents_resident == 1);
}

TEST_CASE("a corrupt but well-hashed image kills only its guest and the node keeps serving") {
  Cluster c = strong_cluster(2);
  auto build = image::build_id_of(guest_path());
  REQUIRE(build);
  testing::set_image_hook(c[0], [build = *build](std::vector<std::uint8_t>& bytes, std::string& sha256) {
    auto header = image::peek_header(bytes);
    REQUIRE(header);
    auto opened = image::open_image(bytes, {build, header->arena_base, header->arena_bytes});
    REQUIRE(opened);
    std::vector<std::uint8_t> used = opened->used;
    for (std::size_t i = 4096; i < used.size(); i += 8) used[i] ^= 0xa5;
    auto bad = image::take_image({build, header->arena_base, header->arena_bytes, header->agent_handle}, used);
    REQUIRE(bad);
    bytes = std::move(*bad);
    sha256 = sha256_hex(bytes);
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::failed);
  CHECK_FALSE(s.reason.empty());
  CHECK(s.location == c.addr[1]);
  // The destination goes on: a healthy strong agent launched there moves and finishes.
  Value back = Value::table();
  back.set("stops", Value::array({c.addr[0]}));
  auto next = launch_strong(c[1], bundle_of(kHop), back);
  REQUIRE(next.ok());
  AgentStatus fine = run_to_end(c[1], *next);
  REQUIRE_MESSAGE(fine.status == AgentState::finished, fine.reason);
  CHECK(fine.result.get(1).as_string() == "ok 3 at " + c.addr[0]);
  CHECK(c[1].call_local("kv.get", Value::array({"price"}))->as_integer() == 110);
}

TEST_CASE("a policy rule with strong: false refuses strong agents and keeps weak ones") {
  auto policy = Policy::parse(R"({"default": {"name": "no-images", "strong": false, "isolation": ["process"]}})");
  REQUIRE_MESSAGE(policy.ok(), (policy.ok() ? "" : policy.error().message));
  CHECK_FALSE(policy->default_rule().allow_strong);
  CHECK_ERROR(Policy::parse(R"({"default": {"strong": "no"}})"), Errc::bad_policy, "default.strong", "must be true or false");
  auto shared = std::make_shared<const Policy>(std::move(*policy));
  Cluster c(1, [shared](int, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.policy = shared;
  });
  CHECK_ERROR(launch_strong(c[0], bundle_of(kHop)), Errc::policy_refused, "rule no-images refuses strong agents of unsigned code");
  AgentLaunch weak;
  weak.bundle = bundle_of("function start() return 'weak ok' end");
  auto id = c[0].launch({}, weak);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::finished);
  CHECK(s.hops[0].mobility == "weak");
}

TEST_CASE("a signed manifest asking for strong mobility makes a strong agent, and a policy refuses it per signer") {
  auto alice = test::new_key();
  auto bob = test::new_key();
  auto policy = test::policy_from(R"({"keys": {"alice": ")" + alice->fingerprint() + R"("},
    "rules": [{"name": "alice-weak-only", "signer": "alice", "strong": false, "isolation": ["process"]}],
    "default": {"isolation": ["process"]}})");
  Cluster c(2, [policy](int, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.policy = policy;
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  Bundle strong = bundle_of(kHop);
  strong.manifest.mobility = "strong";
  // The launch itself asks for nothing: the signed manifest makes the agent strong, so its
  // agent.go(peer) returns on the peer with its locals.
  AgentLaunch l;
  l.bundle = strong;
  l.state = state;
  l.signing_key = bob;
  auto id = c[0].launch({}, l);
  REQUIRE_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::finished);
  CHECK(s.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
  REQUIRE(s.hops.size() == 2);
  CHECK(s.hops[0].mobility == "strong");
  CHECK(s.hops[1].mobility == "strong");
  // The same strong bundle signed by alice: her rule refuses strong agents, at launch.
  l.signing_key = alice;
  CHECK_ERROR(c[0].launch({}, l), Errc::policy_refused, "rule alice-weak-only refuses strong agents of");
  // A launch option asking for strong is written into the manifest she signs: refused too.
  AgentLaunch asked;
  asked.bundle = bundle_of(kHop);
  asked.state = state;
  asked.signing_key = alice;
  asked.mobility = Mobility::strong;
  CHECK_ERROR(c[0].launch({}, asked), Errc::policy_refused, "rule alice-weak-only refuses strong agents of");
  // Her weak agents run.
  AgentLaunch weak;
  weak.bundle = bundle_of("function start() return 'weak ok' end");
  weak.signing_key = alice;
  auto weak_id = c[0].launch({}, weak);
  REQUIRE(weak_id.ok());
  AgentStatus w = run_to_end(c[0], *weak_id);
  CHECK(w.result.get(1).as_string() == "weak ok");
  CHECK(w.hops[0].mobility == "weak");
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

TEST_CASE("image pieces are checked before they are kept, and the node keeps serving") {
  Cluster c = strong_cluster(2);
  auto build = image::build_id_of(guest_path());
  REQUIRE(build.ok());
  // A well-formed image of one page that declares an arena of 64 GiB: refused at its first
  // piece, before anything is kept.
  std::vector<std::uint8_t> page(image::kPageBytes, 0);
  page[0] = 1;
  auto huge = image::take_image({*build, 0x1000'0000'0000, std::uint64_t{64} << 30, 0}, page);
  REQUIRE(huge.ok());
  ImagePart part;
  part.id = std::string(32, 'd');
  part.epoch = 1;
  part.image_sha256 = sha256_hex(*huge);
  part.total_bytes = huge->size();
  part.bytes = *huge;
  CHECK_ERROR(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))), Errc::sandbox_refused,
              "heap image declares an arena of 68719476736 bytes, above the memory quota's");
  // An honest header with a total far beyond what its payload can seal to.
  auto small = image::take_image({*build, 0x1000'0000'0000, 4u << 20, 0}, page);
  REQUIRE(small.ok());
  part.image_sha256 = sha256_hex(*small);
  part.bytes = *small;
  part.total_bytes = std::uint64_t{1} << 40;
  CHECK_ERROR(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))), Errc::sandbox_refused,
              "is larger than its payload");
  // A piece with no first piece before it, and a piece past its declared total.
  part.total_bytes = small->size() + 10;
  part.offset = 100;
  const std::vector<std::uint8_t> abc{'a', 'b', 'c'}, eleven(11, 'x');
  part.bytes = abc;
  CHECK_ERROR(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))), Errc::invalid_argument,
              "follows no piece before it");
  part.offset = small->size();
  part.bytes = eleven;
  CHECK_ERROR(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))), Errc::invalid_argument,
              "bad agent message: image part: 11 bytes at offset");
  // A staged image that no TRANSFER claims takes no agent's place: a real one still moves.
  part.offset = 0;
  part.total_bytes = small->size();
  part.bytes = *small;
  CHECK(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))).ok());
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
}
