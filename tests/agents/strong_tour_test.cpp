// Strong mobility as a user meets it (issue 13, "What a user can do"), over three nodes and
// through public interfaces only (the `sojourn` command, Node): the README's tour sample, the
// itinerary's and `sojourn ps`'s image figures, a hand-over that falls back home (where the
// next line runs), a travelling CPU budget spent on the third node (its reason sent home), a
// policy refusing one signer's strong agents at a hand-over, and a 64 MB heap imaged again after
// its first restore.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"
#include "sojourn/core/json.hpp"
#include "sojourn/core/signature.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/daemon_node.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/trust_nodes.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Process;
using sojourn::test::run;
using sojourn::test::TempDir;

namespace {

const std::string cli = SOJOURN_CLI_PATH;

// A `sojourn node` daemon on loopback whose code from peers runs in the process jail.
struct DaemonNode : test::DaemonNode {
  DaemonNode(const std::string& name, int price)
      : test::DaemonNode(cli, name, {"--peer-isolation", "process", "--data", "price=" + std::to_string(price)}) {}
};

Value parse_json(const std::string& text) {
  auto v = value_from_json(text);
  REQUIRE_MESSAGE(v.ok(), "not JSON: " << text);
  return *v;
}

std::uint64_t field(const Value& t, const char* key) { return static_cast<std::uint64_t>(t.get(key).as_integer()); }

// An address nothing listens on: port 1 of loopback (a privileged port no test binds).
constexpr const char* kNowhere = "127.0.0.1:1";

}  // namespace

TEST_CASE("the README's strong tour runs from samples/agents/tour.lua over three nodes, each hop's image in the itinerary") {
  DaemonNode a("a", 1), b("b", 2), c("c", 3);
  const std::string tour = std::string(SOJOURN_SOURCE_DIR) + "/samples/agents/tour.lua";
  const std::string state = R"({"stops": [")" + b.address + R"(", ")" + c.address + R"("]})";
  auto r = run({cli, "launch", tour, "--at", a.address, "--strong", "--state", state, "--wait", "--timeout-ms", "120000",
                "--json"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  Value out = parse_json(r.out);
  REQUIRE(out.get("ok").as_bool());
  Value agent = out.get("agent");
  CHECK(agent.get("status").as_string() == "finished");
  CHECK(agent.get("location").as_string() == c.address);
  CHECK(agent.get("epoch").as_integer() == 2);
  // The loop's locals and the half-used generator went with it: the line after agent.go ran on
  // each stop with the generator's next value and that node's data.
  Value seen = agent.get("result").get(1);
  REQUIRE(seen.length() == 2);
  CHECK(seen.get(1).get("at").as_string() == b.address);
  CHECK(seen.get(1).get("n").as_integer() == 1);
  CHECK(seen.get(1).get("price").as_integer() == 2);
  CHECK(seen.get(2).get("at").as_string() == c.address);
  CHECK(seen.get(2).get("n").as_integer() == 2);
  CHECK(seen.get(2).get("price").as_integer() == 3);
  // Per hop: how it travelled, the image it left with (raw and as sent), the host's time
  // imaging it there and restoring it on arrival.
  Value hops = agent.get("hops");
  REQUIRE(hops.length() == 3);
  const std::vector<std::string> where{a.address, b.address, c.address};
  for (std::int64_t i = 1; i <= 3; ++i) {
    Value h = hops.get(i);
    CAPTURE(i);
    CHECK(h.get("node").as_string() == where[static_cast<std::size_t>(i - 1)]);
    CHECK(h.get("mobility").as_string() == "strong");
    CHECK(h.get("isolation").as_string() == "process");
    if (i < 3) {  // it left this node with an image
      CHECK(field(h, "image_bytes") > 0);
      CHECK(field(h, "image_raw_bytes") > field(h, "image_bytes"));  // zero pages left out, compressed
      CHECK(field(h, "image_us") > 0);
      CHECK(field(hops.get(i + 1), "state_bytes") == field(h, "image_bytes"));  // what arrived is that image
    }
    if (i > 1) CHECK(field(h, "restore_us") > 0);  // it arrived as an image
  }
  CHECK(field(hops.get(1), "restore_us") == 0);  // launched from its entry, not restored
  CHECK(field(hops.get(3), "image_bytes") == 0);  // it finished there
  // The same itinerary as a table, for people.
  auto waited = run({cli, "wait", agent.get("id").as_string(), "--home", a.address});
  REQUIRE(waited.exit_code == 0);
  CHECK(waited.out.find("mobility  image_raw image_wire  image_us restore_us") != std::string::npos);
  CHECK(waited.out.find(" process   strong ") != std::string::npos);
}

TEST_CASE("a strong hand-over that finds nobody falls back home at the next line; stranded there, sojourn ps shows its image") {
  DaemonNode a("a", 1), b("b", 2), c("c", 3);
  TempDir dir;
  // Checkpoints on the way; then a go to nowhere from C falls back home (A) and returns there;
  // a second go to nowhere from home has no fallback: the agent is stranded at A, image kept.
  const std::string path = dir.write("fallback.lua", R"(
function start(s)
  local trail = { agent.here }
  local function note() trail[#trail + 1] = agent.here .. "=" .. node.call("kv.get", "price") end
  agent.go(s.stops[1])
  note()
  agent.checkpoint()
  note()
  agent.go(s.stops[2])
  note()
  local went = agent.go(s.nowhere)
  note()
  node.call("kv.put", "trail", tostring(went) .. " " .. table.concat(trail, " "))
  agent.go(s.nowhere)
  return "never here"
end
)");
  const std::string state =
      R"({"stops": [")" + b.address + R"(", ")" + c.address + R"("], "nowhere": ")" + kNowhere + R"("})";
  auto launched = run({cli, "launch", path, "--at", a.address, "--strong", "--state", state});
  INFO("stdout: " << launched.out << "\nstderr: " << launched.err);
  REQUIRE(launched.exit_code == 0);
  REQUIRE(launched.out.size() >= 32);
  const std::string id = launched.out.substr(0, 32);

  // Polled by time: a loaded machine may take seconds per hop.
  Value mine;
  const auto until = std::chrono::steady_clock::now() + 120s;
  while (std::chrono::steady_clock::now() < until) {
    auto ps = run({cli, "ps", a.address, "--json"});
    REQUIRE(ps.exit_code == 0);
    Value listed = parse_json(ps.out).get("agents");
    for (std::int64_t i = 1; i <= static_cast<std::int64_t>(listed.length()); ++i) {
      if (listed.get(i).get("id").as_string() == id && listed.get(i).get("status").as_string() == "stranded") {
        mine = listed.get(i);
      }
    }
    if (mine.is_table()) break;
    std::this_thread::sleep_for(100ms);
  }
  REQUIRE_MESSAGE(mine.is_table(), "agent " << id << " never listed stranded at " << a.address);
  CHECK(mine.get("mobility").as_string() == "strong");
  CHECK(mine.get("isolation").as_string() == "process");
  CHECK(mine.get("epoch").as_integer() == 3);  // a -> b -> c -> a
  CHECK(field(mine, "image_bytes") > 0);     // the image it would have left with, kept here
  CHECK(mine.get("reason").as_string().rfind("cannot move agent " + id + " to " + kNowhere + ": ", 0) == 0);
  // The table for people: one row, strong, with its image's size.
  auto table = run({cli, "ps", a.address});
  REQUIRE(table.exit_code == 0);
  CHECK(table.out.find("MOBILITY IMAGE_BYTES STATUS") != std::string::npos);
  const auto row = table.out.find(id);
  REQUIRE(row != std::string::npos);
  const std::string line = table.out.substr(row, table.out.find('\n', row) - row);
  CHECK(line.find(" process   strong   ") != std::string::npos);
  CHECK(line.find(" " + std::to_string(field(mine, "image_bytes")) + " stranded: cannot move agent ") != std::string::npos);

  // Its home tells the whole story: the line after the failed go ran at home, with every local.
  auto where = run({cli, "locate", id, "--home", a.address, "--json"});
  REQUIRE(where.exit_code == 0);
  Value status = parse_json(where.out).get("agent");
  CHECK(status.get("status").as_string() == "stranded");
  CHECK(status.get("location").as_string() == a.address);
  // (Its log goes home with its end; the home's kv store has what it wrote there.)
  auto trail = run({cli, "call", a.address, "kv.get", R"(["trail"])"});
  REQUIRE(trail.exit_code == 0);
  CHECK(trail.out == "\"true " + a.address + " " + b.address + "=2 " + b.address + "=2 " + c.address + "=3 " + a.address +
                         "=1\"\n");
  Value hops = status.get("hops");
  REQUIRE(hops.length() == 4);
  for (std::int64_t i = 1; i <= 4; ++i) CHECK(hops.get(i).get("mobility").as_string() == "strong");
  CHECK(hops.get(4).get("node").as_string() == a.address);
  // (A home learns a hop's image figures with the agent's end report: a stranded agent's
  // itinerary there has the hops, their jail and mobility, and zeros for its figures.)
  for (std::int64_t i = 1; i <= 4; ++i) CHECK(hops.get(i).get("isolation").as_string() == "process");
  CHECK(field(hops.get(2), "state_bytes") > 0);  // the image it arrived with
}

TEST_CASE("a strong agent runs out of its travelling CPU budget on the third node and the reason reaches home") {
  test::Cluster c(3, [](int, NodeOptions& o) { o.peer_isolation = Isolation::process; });
  auto bundle = single_file_bundle("spender", R"(
function start(s)
  local spent = 0
  for i, stop in ipairs(s.stops) do
    agent.go(stop)
    spent = spent + i
  end
  agent.log("spent " .. spent .. " at " .. agent.here)
  local x = 0
  while true do x = x + 1 end
end)", {"start"});
  REQUIRE(bundle.ok());
  bundle->manifest.cpu_budget = 5'000'000;  // the whole tour's; each step's own limit is higher
  AgentLaunch l;
  l.bundle = *bundle;
  l.state = Value::table();
  l.state.set("stops", Value::array({c.addr[1], c.addr[2]}));
  l.owner = "tester";
  l.mobility = Mobility::strong;
  auto id = c[0].launch({}, l);
  REQUIRE_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
  auto s = c[0].wait_agent({}, *id, 120s);
  REQUIRE(s.ok());
  REQUIRE_MESSAGE(s->done(), "agent " << *id << " is " << agent_state_name(s->status) << ": " << s->reason);
  CHECK(s->status == AgentState::failed);
  CHECK(s->reason == "agent " + *id + " ran out of its CPU budget of 5000000 instructions (at " + c.addr[2] + ")");
  CHECK(s->epoch == 2);
  CHECK(s->location == c.addr[2]);
  REQUIRE(s->log.size() == 1);
  CHECK(s->log[0] == c.addr[2] + ": spent 3 at " + c.addr[2]);
  REQUIRE(s->hops.size() == 3);
  for (const AgentHop& h : s->hops) CHECK(h.mobility == "strong");
  // Its hosts keep serving: the failed agent left nothing resident.
  CHECK(c[2].stats().agents_resident == 0);
  CHECK(c[2].call_local("kv.get", Value::array({"price"}))->as_integer() == 120);
}

TEST_CASE("a policy refusing one signer's strong agents turns them back at its hand-over, home at the next line; another signer's pass") {
  auto alice = test::new_key();
  auto bob = test::new_key();
  const std::string keys = R"({"keys": {"alice": ")" + alice->fingerprint() + R"("},)";
  // Only n2 refuses alice's strong agents; every node runs peers' code in the process jail.
  auto open = test::policy_from(keys + R"("default": {"isolation": ["process"]}})");
  auto strict = test::policy_from(keys + R"("rules": [{"name": "alice-weak-only", "signer": "alice", "strong": false,
    "isolation": ["process"]}], "default": {"isolation": ["process"]}})");
  test::Cluster c(3, [&](int i, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.policy = i == 2 ? strict : open;
  });
  auto bundle = single_file_bundle("turned_back", R"(
function start(s)
  local trail = {}
  for _, stop in ipairs(s.stops) do
    agent.go(stop)
    trail[#trail + 1] = agent.here
  end
  return table.concat(trail, " ")
end)", {"start"});
  REQUIRE(bundle.ok());
  auto tour = [&](std::shared_ptr<const SigningKey> key) {
    AgentLaunch l;
    l.bundle = *bundle;
    l.state = Value::table();
    l.state.set("stops", Value::array({c.addr[1], c.addr[2]}));
    l.signing_key = std::move(key);
    l.mobility = Mobility::strong;
    auto id = c[0].launch({}, l);
    REQUIRE_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
    auto s = c[0].wait_agent({}, *id, 120s);
    REQUIRE(s.ok());
    REQUIRE_MESSAGE(s->status == AgentState::finished, agent_state_name(s->status) << ": " << s->reason);
    return *s;
  };
  // Alice's agent: n2 refuses its TRANSFER; the agent falls back home (n0), where agent.go(n2)
  // returns, its loop intact.
  AgentStatus refused = tour(alice);
  CHECK(refused.result.get(1).as_string() == c.addr[1] + " " + c.addr[0]);
  REQUIRE(refused.hops.size() == 3);
  CHECK(refused.hops[1].node == c.addr[1]);
  CHECK(refused.hops[2].node == c.addr[0]);
  for (const AgentHop& h : refused.hops) CHECK(h.mobility == "strong");
  CHECK(c[2].stats().agents_resident == 0);
  // Bob's, the same code: n2 takes it.
  AgentStatus passed = tour(bob);
  CHECK(passed.result.get(1).as_string() == c.addr[1] + " " + c.addr[2]);
  REQUIRE(passed.hops.size() == 3);
  CHECK(passed.hops[2].node == c.addr[2]);
}

TEST_CASE("a 64 MB heap tours three nodes: imaged again after its restore, it arrives intact each time") {
  test::Cluster c(3, [](int, NodeOptions& o) { o.peer_isolation = Isolation::process; });
  // 64 Ki strings of ~1 KB of pseudo-random hex (each 1 KB piece used again only 1 MB further
  // on, beyond zstd's window), so the image stays over one 16 MB frame: it travels in pieces.
  // A checksum taken at the start is compared on each stop.
  auto bundle = single_file_bundle("big", R"(
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
  local seen = {}
  for _, stop in ipairs(s.stops) do
    agent.go(stop)
    local bad = 0
    for i = 1, #big, 7 do
      if big[i] ~= blocks[i % 1024 + 1] .. i then bad = bad + 1 end
    end
    seen[#seen + 1] = agent.here .. ":" .. bad .. ":" .. tostring(checksum() == before)
  end
  return table.concat(seen, " ")
end)", {"start"});
  REQUIRE(bundle.ok());
  bundle->manifest.quotas.memory_bytes = 192u << 20;
  bundle->manifest.quotas.wall_ms = 60'000;  // a loaded sanitizer run: one step may take seconds
  AgentLaunch l;
  l.bundle = *bundle;
  l.state = Value::table();
  l.state.set("stops", Value::array({c.addr[1], c.addr[2]}));
  l.mobility = Mobility::strong;
  auto id = c[0].launch({}, l);
  REQUIRE_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
  auto s = c[0].wait_agent({}, *id, 240s);
  REQUIRE(s.ok());
  REQUIRE_MESSAGE(s->status == AgentState::finished, agent_state_name(s->status) << ": " << s->reason);
  CHECK(s->result.get(1).as_string() == c.addr[1] + ":0:true " + c.addr[2] + ":0:true");
  REQUIRE(s->hops.size() == 3);
  for (std::size_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    CHECK(s->hops[i].image_raw_bytes > (64u << 20));
    CHECK(s->hops[i].image_bytes > (16u << 20));  // over the default frame limit: sent in pieces
    CHECK(s->hops[i + 1].state_bytes == s->hops[i].image_bytes);
  }
}
