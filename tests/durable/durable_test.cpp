// Durable nodes (issue 16, docs/reliability.md): with a data dir, the kv store and the
// agents a node is home to outlive the node, in process (a Node destroyed and made again
// on the same directory) and for real (`sojourn node` killed with SIGKILL and started
// again); a store that cannot be used stops the node with a clear error.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"
#include "tests/support/parked_agent.hpp"
#include "tests/support/daemon_node.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Process;
using sojourn::test::TempDir;
using sojourn::test::file_text;

namespace {

NodeOptions options_for(const std::string& name, const std::string& data_dir, Durability durability = Durability::full) {
  NodeOptions o;
  o.name = name;
  o.peer_isolation = Isolation::trusted;  // what is tested is the store, not the jail
  o.data_dir = data_dir;
  o.durability = durability;
  return o;
}

std::unique_ptr<Node> start(const std::string& name, const std::string& data_dir, Durability durability = Durability::full) {
  auto node = std::make_unique<Node>(options_for(name, data_dir, durability));
  auto bound = node->listen("127.0.0.1:0");
  REQUIRE(bound.ok());
  return node;
}

Result<Value> kv(Node& node, const char* service, std::initializer_list<Value> args) {
  return node.call_local(service, Value::array(args));
}

// Finishes at once at its home, with a result and a line of log.
constexpr const char* kQuick = R"(local M = {}
function M.start(s)
  agent.log("counted " .. s.n)
  return s.n * 2, "done"
end
return M)";

}  // namespace

TEST_CASE("the kv store outlives its node on the same data dir, at durability full and normal") {
  for (Durability d : {Durability::full, Durability::normal}) {
    CAPTURE(static_cast<int>(d));
    TempDir dir;
    {
      auto node = start("a", dir.path(), d);
      auto where = node->storage();
      REQUIRE(where.ok());
      CHECK(where->find(dir / "sojourn.db") != std::string::npos);
      CHECK(where->find(d == Durability::full ? "durability full" : "durability normal") != std::string::npos);
      Value table = Value::table();
      table.set("x", 1);
      table.set("name", "ada");
      REQUIRE(kv(*node, "kv.put", {"t", table}).ok());
      REQUIRE(kv(*node, "kv.put", {"n", 42}).ok());
      REQUIRE(kv(*node, "kv.put", {"gone", "soon"}).ok());
      REQUIRE(kv(*node, "kv.put", {"n", 43}).ok());          // replaced
      REQUIRE(kv(*node, "kv.put", {"gone", Value{}}).ok());  // a nil value removes
      REQUIRE(kv(*node, "kv.put", {"del", true}).ok());
      REQUIRE(kv(*node, "kv.del", {"del"}).ok());
    }  // destroyed: the store is closed
    auto again = start("a", dir.path(), d);
    auto n = kv(*again, "kv.get", {"n"});
    REQUIRE(n.ok());
    REQUIRE(n->is_integer());
    CHECK(n->as_integer() == 43);
    auto t = kv(*again, "kv.get", {"t"});
    REQUIRE(t.ok());
    REQUIRE(t->is_table());
    CHECK(t->get("x").as_integer() == 1);
    CHECK(t->get("name").as_string() == "ada");
    auto keys = kv(*again, "kv.keys", {});
    REQUIRE(keys.ok());
    REQUIRE(keys->length() == 2);  // neither "gone" nor "del"
    CHECK(keys->get(1).as_string() == "n");
    CHECK(keys->get(2).as_string() == "t");
    // The store's byte count came back too: the limit still holds after a restart.
    CHECK(kv(*again, "kv.put", {"more", "x"}).ok());
  }
}

TEST_CASE("a node without a data dir says it keeps everything in memory, and a restart loses it") {
  auto node = start("m", "");
  auto where = node->storage();
  REQUIRE(where.ok());
  CHECK(where->find("in memory") != std::string::npos);
}

TEST_CASE("a home answers status and wait for the agents it tracked after a restart on the same data dir") {
  TempDir dir;
  std::string id;
  {
    auto home = start("home", dir.path());
    auto bundle = single_file_bundle("quick", kQuick);
    REQUIRE(bundle.ok());
    AgentLaunch l;
    l.bundle = *bundle;
    l.state = Value::table();
    l.state.set("n", 21);
    auto launched = home->launch(home->advertised_address(), l);
    REQUIRE(launched.ok());
    id = *launched;
    auto s = home->wait_agent(home->advertised_address(), id, 10s);
    REQUIRE(s.ok());
    INFO(s->reason);
    REQUIRE(s->status == AgentState::finished);
  }
  auto home = start("home", dir.path());
  CHECK(home->stats().agents_tracked == 1);
  // agent.wait answers at once for an agent that ended before the restart.
  auto s = home->wait_agent(home->advertised_address(), id, 5s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_integer() == 42);
  CHECK(s->result.get(2).as_string() == "done");
  REQUIRE(s->log.size() == 1);
  CHECK(s->log[0].ends_with(": counted 21"));  // "NODE: LINE"
  CHECK_FALSE(s->hops.empty());
  auto status = home->agent_status(home->advertised_address(), id);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::finished);
  // An id it never tracked is still unknown.
  CHECK_FALSE(home->agent_status(home->advertised_address(), std::string(32, 'a')).ok());
}

TEST_CASE("an agent parked at a node runs again from its entry after that node restarts on its data dir") {
  TempDir dir;
  auto home = start("home", dir / "home");
  std::string host_address;
  const char* source = R"(local M = {}
function M.start(s) s.n = 1; agent.go(agent.itinerary[1], "park") end
function M.park(s)
  s.n = s.n + 1
  local m = agent.receive()
  if m == nil then agent.wait("park") end
  return m, s.n, agent.epoch
end
return M)";
  auto bundle = single_file_bundle("parker", source);
  REQUIRE(bundle.ok());
  std::string id;
  {
    auto host = start("host", dir / "host");
    host_address = host->advertised_address();
    id = test::launch_parked(*home, *host, *bundle);  // asleep at the host, waiting for a message
  }  // the host goes away with the agent on it
  auto host = std::make_unique<Node>(options_for("host", dir / "host"));
  REQUIRE(host->listen(host_address).ok());  // the address its home knows it at
  auto agents = host->list_agents();
  REQUIRE(agents.ok());
  REQUIRE(agents->size() == 1);
  CHECK((*agents)[0].id == id);
  REQUIRE(home->send_to_agent(home->advertised_address(), id, Value("wake up")).ok());
  auto s = home->wait_agent(home->advertised_address(), id, 10s);
  REQUIRE(s.ok());
  INFO(s->reason);
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_string() == "wake up");
  CHECK(s->result.get(2).as_integer() == 3);  // the state it parked with (n = 2), then this step
  CHECK(s->result.get(3).as_integer() == 1);
  // Ended: no longer stored at the host.
  CHECK(host->list_agents()->empty());
}

TEST_CASE("a data dir whose store is not a database stops the node with an error and keeps the file as it was") {
  TempDir dir;
  const std::string garbage(8192, 'x');
  const std::string db = dir.write("sojourn.db", garbage);
  Node node(options_for("bad", dir.path()));
  auto where = node.storage();
  REQUIRE_FALSE(where.ok());
  CHECK(where.error().message.find(db) != std::string::npos);
  auto bound = node.listen("127.0.0.1:0");
  REQUIRE_FALSE(bound.ok());
  CHECK(bound.error().message == where.error().message);
  // Nothing pretends to be stored.
  CHECK_FALSE(kv(node, "kv.put", {"k", 1}).ok());
  CHECK_FALSE(kv(node, "kv.get", {"k"}).ok());
  CHECK(file_text(db) == garbage);
}

TEST_CASE("a data dir that is a file, or a store with damaged rows, is refused at start-up") {
  TempDir dir;
  {
    Node node(options_for("file", dir.write("plain-file", "x")));
    auto where = node.storage();
    REQUIRE_FALSE(where.ok());
    CHECK(where.error().message.find("plain-file") != std::string::npos);
  }
  {
    // A kv row whose value does not decode (written by hand, as a damaged file would hold).
    { auto node = start("rows", dir / "rows"); REQUIRE(kv(*node, "kv.put", {"k", 1}).ok()); }
    auto sqlite = test::run({"/usr/bin/sqlite3", dir / "rows/sojourn.db", "UPDATE kv SET value = x'ff00ff' WHERE key = 'k';"});
    REQUIRE(sqlite.exit_code == 0);
    Node node(options_for("rows", dir / "rows"));
    auto where = node.storage();
    REQUIRE_FALSE(where.ok());
    CHECK(where.error().message.find("'k'") != std::string::npos);
  }
}

#ifdef SOJOURN_CLI_PATH
namespace {

const std::string cli = SOJOURN_CLI_PATH;

// `sojourn node` on a data dir; its address from its start-up lines.
struct Daemon {
  Process process;
  std::string address, storage_line;
  explicit Daemon(const std::string& data_dir)
      : process({cli, "node", "--listen", "127.0.0.1:0", "--name", "d", "--data-dir", data_dir, "--peer-isolation", "trusted"}) {
    REQUIRE(process.started());
    address = sojourn::test::listening_address(process, "d", 20000, 10, [this](const std::string& line) {
      if (line.rfind("node d stores its state", 0) == 0) storage_line = line;
    });
  }
};

}  // namespace

TEST_CASE("sojourn node killed with SIGKILL keeps its kv store and a finished agent's result on its data dir") {
  TempDir dir;
  const std::string data = dir / "data";
  const std::string agent = dir.write("quick.lua", kQuick);
  std::string id;
  {
    Daemon node(data);
    CHECK(node.storage_line == "node d stores its state in " + data + "/sojourn.db (SQLite, WAL, durability full)");
    auto put = test::run({cli, "call", node.address, "kv.put", R"(["k", {"x": 7}])"});
    REQUIRE(put.exit_code == 0);
    auto launched = test::run({cli, "launch", agent, "--at", node.address, "--state", R"({"n": 5})"});
    INFO(launched.err);
    REQUIRE(launched.exit_code == 0);
    // The id is the last word of the first line.
    std::string first = launched.out.substr(0, launched.out.find('\n'));
    id = first.substr(first.find_last_of(' ') + 1);
    REQUIRE(id.size() == 32);
    auto waited = test::run({cli, "wait", id, "--home", node.address});
    INFO(waited.out, waited.err);
    REQUIRE(waited.exit_code == 0);
    node.process.signal(SIGKILL);  // no shutdown, no close: what was acknowledged must be on disk
    node.process.wait();
  }
  Daemon again(data);
  auto get = test::run({cli, "call", again.address, "kv.get", R"(["k"])"});
  CHECK(get.exit_code == 0);
  CHECK(get.out == "{\"x\":7}\n");
  auto waited = test::run({cli, "wait", id, "--home", again.address, "--timeout-ms", "5000"});
  INFO(waited.out, waited.err);
  CHECK(waited.exit_code == 0);
  CHECK(waited.out.find("agent " + id + " finished") != std::string::npos);
  CHECK(waited.out.find("result: 10") != std::string::npos);
  CHECK(waited.out.find(": counted 5\n") != std::string::npos);
}
#endif
