// Exactly-once steps (issue 16, docs/reliability.md): an agent step's kv writes are seen by
// the step, by nobody else until the step's outcome commits them in one transaction; a step
// cut short by the death of its node leaves none of them, and its rerun's appear once.
#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <thread>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"
#include "tests/support/daemon_node.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Process;
using sojourn::test::TempDir;

namespace {

NodeOptions step_options(const std::string& name, const std::string& data_dir) {
  NodeOptions o;
  o.name = name;
  o.peer_isolation = Isolation::trusted;  // what is tested is the store, not the jail
  o.data_dir = data_dir;
  return o;
}

// Counts itself in "count", writes and removes "scratch", tells the test it is inside its
// step (test.entered), and holds there until the test lets it go (test.release).
constexpr const char* kCounting = R"(local M = {}
function M.start(s)
  local n = (node.call("kv.get", "count") or 0) + 1
  node.call("kv.put", "count", n)
  node.call("kv.put", "scratch", "x")
  local scratch = node.call("kv.get", "scratch")
  node.call("kv.del", "scratch")
  local keys = node.call("kv.keys")
  node.call("test.entered")
  while not node.call("test.release") do end
  return node.call("kv.get", "count"), scratch, #keys, node.call("kv.get", "scratch") == nil
end
return M)";

}  // namespace

TEST_CASE("a step sees its own kv writes, and the node shows them only once the step has ended") {
  for (bool durable : {false, true}) {
    CAPTURE(durable);
    TempDir dir;
    Node node(step_options("s", durable ? dir.path() : std::string()));
    REQUIRE(node.listen("127.0.0.1:0").ok());
    std::atomic<bool> entered{false}, release{false};
    node.register_service("test.entered", [&](const Value&) -> Result<Value> {
      entered = true;
      return Value{};
    });
    node.register_service("test.release", [&](const Value&) -> Result<Value> {
      if (!release) std::this_thread::sleep_for(1ms);
      return Value(release.load());
    });
    REQUIRE(node.call_local("kv.put", Value::array({"other", 1})).ok());
    auto bundle = single_file_bundle("counting", kCounting);
    REQUIRE(bundle.ok());
    AgentLaunch l;
    l.bundle = *bundle;
    auto id = node.launch(node.advertised_address(), l);
    REQUIRE(id.ok());
    for (int i = 0; i < 500 && !entered; ++i) std::this_thread::sleep_for(10ms);
    REQUIRE(entered);
    // Mid-step: its writes are its own.
    auto count = node.call_local("kv.get", Value::array({"count"}));
    REQUIRE(count.ok());
    CHECK(count->is_nil());
    auto keys = node.call_local("kv.keys", Value::array({}));
    REQUIRE(keys.ok());
    CHECK(keys->length() == 1);  // "other"
    // A client's write is not buffered: it is there at once.
    REQUIRE(node.call_local("kv.put", Value::array({"client", true})).ok());
    CHECK(node.call_local("kv.get", Value::array({"client"}))->is_bool());
    release = true;
    auto s = node.wait_agent(node.advertised_address(), *id, 10s);
    REQUIRE(s.ok());
    INFO(s->reason);
    REQUIRE(s->status == AgentState::finished);
    CHECK(s->result.get(1).as_integer() == 1);    // its own put, read back inside the step
    CHECK(s->result.get(2).as_string() == "x");   // likewise
    CHECK(s->result.get(3).as_integer() == 2);    // "count" and "other" as the step saw them (its "scratch" removed)
    CHECK(s->result.get(4).as_bool());         // its own kv.del
    count = node.call_local("kv.get", Value::array({"count"}));
    REQUIRE(count.ok());
    REQUIRE(count->is_integer());
    CHECK(count->as_integer() == 1);
    CHECK(node.call_local("kv.get", Value::array({"scratch"}))->is_nil());
  }
}

TEST_CASE("a step's kv writes count against the store's limit while the step holds them") {
  NodeOptions o = step_options("limit", "");
  o.kv_max_bytes = 120;
  Node node(o);
  REQUIRE(node.listen("127.0.0.1:0").ok());
  constexpr const char* kFill = R"(local M = {}
function M.start(s)
  local ok1 = pcall(node.call, "kv.put", "a", string.rep("x", 60))
  local ok2, err = pcall(node.call, "kv.put", "b", string.rep("y", 60))
  node.call("kv.put", "a", nil)
  local ok3 = pcall(node.call, "kv.put", "b", string.rep("y", 60))
  return ok1, ok2, tostring(err), ok3
end
return M)";
  auto bundle = single_file_bundle("fill", kFill);
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  auto id = node.launch(node.advertised_address(), l);
  REQUIRE(id.ok());
  auto s = node.wait_agent(node.advertised_address(), *id, 10s);
  REQUIRE(s.ok());
  INFO(s->reason);
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_bool());
  CHECK_FALSE(s->result.get(2).as_bool());  // the first put's room is held
  CHECK(s->result.get(3).as_string().find("the store would exceed its limit of 120 bytes") != std::string::npos);
  CHECK(s->result.get(4).as_bool());  // released by its own removal
  CHECK(node.call_local("kv.get", Value::array({"a"}))->is_nil());
  CHECK(node.call_local("kv.get", Value::array({"b"}))->is_string());
  // Nothing stays held once the step has ended: a client may fill what is left.
  auto c = node.call_local("kv.put", Value::array({"c", "z"}));
  INFO((c.ok() ? std::string() : c.error().message));
  CHECK(c.ok());
}

TEST_CASE("a step stopped by its node's shutdown is no outcome: it runs again after a restart on the data dir") {
  TempDir dir;
  auto bundle = single_file_bundle("counting", kCounting);
  REQUIRE(bundle.ok());
  std::string id, address;
  std::atomic<bool> entered{false}, release{false};
  auto with_services = [&](Node& node) {
    node.register_service("test.entered", [&](const Value&) -> Result<Value> {
      entered = true;
      return Value{};
    });
    node.register_service("test.release", [&](const Value&) -> Result<Value> {
      if (!release) std::this_thread::sleep_for(1ms);
      return Value(release.load());
    });
  };
  {
    Node node(step_options("s", dir.path()));
    with_services(node);
    REQUIRE(node.listen("127.0.0.1:0").ok());
    address = node.advertised_address();
    AgentLaunch l;
    l.bundle = *bundle;
    auto launched = node.launch(address, l);
    REQUIRE(launched.ok());
    id = *launched;
    for (int i = 0; i < 500 && !entered; ++i) std::this_thread::sleep_for(10ms);
    REQUIRE(entered);
  }  // shut down mid-step
  release = true;
  Node node(step_options("s", dir.path()));
  with_services(node);
  REQUIRE(node.listen(address).ok());
  auto s = node.wait_agent(address, id, 10s);
  REQUIRE(s.ok());
  INFO(s->reason);
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_integer() == 1);  // the stopped step's count is not there
  CHECK(node.call_local("kv.get", Value::array({"count"}))->as_integer() == 1);
}

#ifdef SOJOURN_CLI_PATH
namespace {

const std::string cli = SOJOURN_CLI_PATH;

// `sojourn node` on a data dir, its log merged into the stdout the test reads (the shell
// execs the node: the pid SIGKILL is sent to is the node's own).
struct LoggingDaemon {
  Process process;
  std::string address;
  explicit LoggingDaemon(const std::string& data_dir, const std::string& listen = "127.0.0.1:0")
      : process({"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", cli, "node", "--listen", listen, "--name", "d",
                 "--data-dir", data_dir, "--peer-isolation", "trusted", "--log-level", "info"}) {
    REQUIRE(process.started());
    address = sojourn::test::listening_address(process, "d", 20000, 100);
  }
  // Reads the log until a line holds `text`.
  bool saw(const std::string& text) {
    for (int i = 0; i < 1000; ++i) {
      const std::string line = process.read_line(20000);
      if (line.find(text) != std::string::npos) return true;
      if (line.empty()) return false;
    }
    return false;
  }
};

}  // namespace

TEST_CASE("a step cut short by SIGKILL leaves none of its kv writes, and its rerun's appear once") {
  TempDir dir;
  const std::string data = dir / "data";
  // Its step counts itself, says so in the log, and holds until "release" is in the store.
  const std::string agent = dir.write("counting.lua", R"(local M = {}
function M.start(s)
  local n = (node.call("kv.get", "count") or 0) + 1
  node.call("kv.put", "count", n)
  agent.log("counted " .. n)
  while node.call("kv.get", "release") == nil do end
  return node.call("kv.get", "count")
end
return M)");
  std::string id, address;
  {
    LoggingDaemon node(data);
    address = node.address;
    auto launched = test::run({cli, "launch", agent, "--at", node.address});
    INFO(launched.err);
    REQUIRE(launched.exit_code == 0);
    std::string first = launched.out.substr(0, launched.out.find('\n'));
    id = first.substr(first.find_last_of(' ') + 1);
    REQUIRE(id.size() == 32);
    REQUIRE(node.saw("counted 1"));  // inside the step, after its kv.put
    node.process.signal(SIGKILL);
    node.process.wait();
  }
  LoggingDaemon again(data, address);  // the agent's home: its address is in the agent's record
  // The step runs again from its entry: it finds no count of its first run.
  auto put = test::run({cli, "call", again.address, "kv.put", R"(["release", true])"});
  REQUIRE(put.exit_code == 0);
  auto waited = test::run({cli, "wait", id, "--home", again.address, "--timeout-ms", "20000"});
  if (waited.exit_code != 0) {
    again.process.signal(SIGKILL);
    again.process.drain(std::chrono::seconds(5));
  }
  INFO(waited.out, waited.err, again.process.out());
  REQUIRE(waited.exit_code == 0);
  CHECK(waited.out.find("result: 1") != std::string::npos);
  auto get = test::run({cli, "call", again.address, "kv.get", R"(["count"])"});
  CHECK(get.exit_code == 0);
  CHECK(get.out == "1\n");
}
#endif
