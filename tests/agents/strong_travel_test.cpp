// The travel check of strong mobility (issue 13), between real nodes on loopback at the process
// level: an agent holding something that cannot travel in a heap image (a userdata standing for
// a host handle, a light userdata, an FFI cdata) gets a Lua error from agent.go naming the path
// of the offending value, before anything is imaged or sent; it can catch it, drop the value and
// go on moving. The real environment hands out none of these values: the test guest
// (sojourn-guest-test) gives test_handle, test_pointer and test_cdata to chunks marked --@handles.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"
#include "tests/support/cluster.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Cluster;

namespace {

Cluster process_cluster(int n) {
  return Cluster(n, [](int, NodeOptions& o) { o.peer_isolation = Isolation::process; });
}

Result<std::string> launch_strong(Node& at, const std::string& source, const std::string& to) {
  auto bundle = single_file_bundle("travel", source, {"start"});
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = std::move(*bundle);
  l.state = Value::table();
  l.state.set("to", Value(to));
  l.owner = "tester";
  l.mobility = Mobility::strong;
  return at.launch({}, std::move(l));
}

AgentStatus run_to_end(Node& home, const std::string& id) {
  auto s = home.wait_agent({}, id, 60s);
  REQUIRE(s.ok());
  REQUIRE_MESSAGE(s->done(), "agent " << id << " is " << agent_state_name(s->status) << ": " << s->reason);
  return *s;
}

// `setup` makes the offending value, `drop` lets go of it; the agent tries a move it catches,
// then moves for real and returns what the failed move said.
std::string agent_of(const std::string& setup, const std::string& drop) {
  return "--@handles\nfunction start(s)\n" + setup +
         "\n  local ok, err = pcall(agent.go, s.to)\n  local here = agent.here\n" + drop +
         "\n  agent.go(s.to)\n  return ok, err, here, agent.here\nend\n";
}

struct Case {
  const char* name;
  std::string setup;
  std::string drop;
  std::string path;
};

std::string deep_path(int links) {
  std::string path = "locals.l";
  for (int i = 0; i < links; ++i) path += ".next";
  return path + ".conn (userdata)";
}

}  // namespace

TEST_CASE("what cannot travel makes agent.go fail with its path, and the agent moves once rid of it") {
  Cluster c = process_cluster(2);
  const std::vector<Case> cases = {
      {"userdata in a local", "  local conn = test_handle()", "  conn = nil", "locals.conn (userdata)"},
      {"userdata in a nested table", "  local cfg = { db = { name = 'x', conn = test_handle() } }",
       "  cfg.db.conn = nil", "locals.cfg.db.conn (userdata)"},
      {"userdata in an upvalue",
       "  local function make() local h = test_handle() return function() return h end end\n"
       "  local use = make()",
       "  use = nil", "locals.use.upvalues.h (userdata)"},
      {"light userdata under a numeric key", "  local list = { 1, 2, test_pointer() }", "  list[3] = nil",
       "locals.list[3] (light userdata)"},
      {"a global", "  held = { test_handle() }", "  held = nil", "globals.held[1] (userdata)"},
      {"cdata in a suspended generator",
       "  local gen = coroutine.wrap(function() local p = test_cdata() coroutine.yield(1) return p end)\n"
       "  gen()",
       "  gen = nil", "locals.gen.upvalues.co.locals.p (cdata)"},
      // Deeper than the walk keeps on its stack (2,000 nodes): set aside and walked from its path.
      {"userdata at the end of a 3,000-long list",
       "  local l = { conn = test_handle() }\n  for i = 1, 2999 do l = { next = l } end",
       "  local t = l\n  for i = 1, 2999 do t = t.next end\n  t.conn = nil", deep_path(2999)},
  };
  std::vector<std::string> ids;
  for (const Case& k : cases) {
    auto id = launch_strong(c[0], agent_of(k.setup, k.drop), c.addr[1]);
    REQUIRE_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
    ids.push_back(*id);
  }
  for (std::size_t i = 0; i < cases.size(); ++i) {
    CAPTURE(cases[i].name);
    AgentStatus s = run_to_end(c[0], ids[i]);
    REQUIRE_MESSAGE(s.status == AgentState::finished, s.reason);
    CHECK_FALSE(s.result.get(1).as_bool());
    CHECK(s.result.get(2).as_string() == "agent.go: cannot travel in a heap image: " + cases[i].path);
    CHECK(s.result.get(3).as_string() == c.addr[0]);  // the refused move left it at home
    CHECK(s.result.get(4).as_string() == c.addr[1]);  // and the clean one took it over
    // One hand-over only: the refused move sent nothing.
    CHECK(s.epoch == 1);
    CHECK(s.hops.size() == 2);
  }
}

TEST_CASE("an agent that does not catch the refusal fails with it and never leaves") {
  Cluster c = process_cluster(2);
  auto id = launch_strong(c[0], R"(--@handles
function start(s)
  local sock = test_handle()
  agent.go(s.to)
  return "moved"
end
)", c.addr[1]);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::failed);
  CHECK(s.reason.find("travel.lua:4: agent.go: cannot travel in a heap image: locals.sock (userdata)") != std::string::npos);
  CHECK(s.location == c.addr[0]);
  CHECK(s.epoch == 0);
  CHECK(s.hops.size() == 1);
  CHECK(s.hops[0].image_bytes == 0);  // nothing was imaged
  CHECK(c[1].stats().agents_resident == 0);
}

TEST_CASE("agent.checkpoint is refused the same way") {
  Cluster c = process_cluster(1);
  auto id = launch_strong(c[0], R"(--@handles
function start(s)
  local t = setmetatable({}, { __index = { handle = test_handle() } })
  local ok, err = pcall(agent.checkpoint)
  getmetatable(t).__index = nil
  agent.checkpoint()
  return ok, err
end
)", c.addr[0]);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  REQUIRE_MESSAGE(s.status == AgentState::finished, s.reason);
  CHECK_FALSE(s.result.get(1).as_bool());
  CHECK(s.result.get(2).as_string() ==
        "agent.checkpoint: cannot travel in a heap image: locals.t.<metatable>.__index.handle (userdata)");
  CHECK(s.hops.at(0).image_bytes > 0);  // the second checkpoint imaged it
}
