// The `sojourn` command end to end: a real `sojourn node` process, then `call`,
// `eval` and `info` against it, checking stdout, stderr and exit codes.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "support/process.hpp"

using sojourn::test::Process;
using sojourn::test::run;

namespace {

const std::string cli = SOJOURN_CLI_PATH;

struct DaemonNode {
  Process process;
  std::string address;
  explicit DaemonNode(const std::string& name = "a", std::vector<std::string> extra = {})
      : process([&] {
          std::vector<std::string> argv{cli, "node", "--listen", "127.0.0.1:0", "--name", name, "--grace-ms", "2000"};
          argv.insert(argv.end(), extra.begin(), extra.end());
          return argv;
        }()) {
    REQUIRE(process.started());
    std::string line;
    const std::string prefix = "node " + name + " listening on ";
    // Lines before it announce published modules.
    for (int i = 0; i < 10 && line.rfind(prefix, 0) != 0; ++i) line = process.read_line(10000);
    REQUIRE(line.rfind(prefix, 0) == 0);
    address = line.substr(prefix.size());
  }
};

}  // namespace

TEST_CASE("sojourn call stores and reads back a value, in plain and JSON output") {
  DaemonNode node;
  auto put = run({cli, "call", node.address, "kv.put", R"(["k", {"x": 1}])"});
  CHECK(put.exit_code == 0);
  CHECK(put.out == "true\n");
  auto get = run({cli, "call", node.address, "kv.get", R"(["k"])"});
  CHECK(get.exit_code == 0);
  CHECK(get.out == "{\"x\":1}\n");
  auto json = run({cli, "call", node.address, "kv.get", R"(["k"])", "--json"});
  CHECK(json.out == "{\"ok\":true,\"result\":{\"x\":1}}\n");
}

TEST_CASE("sojourn eval runs code at the node, from -e and from a file with arguments") {
  // An explicit level, so that the JSON below is the same on a host whose KVM runs microVMs.
  DaemonNode node("a", {"--peer-isolation", "process"});
  REQUIRE(run({cli, "call", node.address, "kv.put", R"(["k", {"x": 1}])"}).exit_code == 0);
  auto e = run({cli, "eval", node.address, "-e", "local v = node.call('kv.get', 'k'); return v.x + 1"});
  CHECK(e.exit_code == 0);
  CHECK(e.out == "2\n");
  std::string path = "cli_test_chunk.lua";
  std::ofstream(path) << "local a, b = ...\nreturn a * b, 'done'\n";
  auto f = run({cli, "eval", node.address, path, "--args", "[6, 7]"});
  CHECK(f.exit_code == 0);
  CHECK(f.out == "42\n\"done\"\n");
  auto j = run({cli, "eval", node.address, path, "--args", "[6, 7]", "--json"});
  CHECK(j.out == "{\"ok\":true,\"results\":[42,\"done\"],\"isolation\":\"process\"}\n");
}

TEST_CASE("exit codes tell usage, connection and remote errors apart") {
  DaemonNode node;
  auto usage = run({cli, "call", node.address, "kv.get", "[not json"});
  CHECK(usage.exit_code == 2);
  CHECK(usage.err.rfind("sojourn: error: invalid JSON:", 0) == 0);
  CHECK(run({cli, "frobnicate"}).exit_code == 2);
  auto conn = run({cli, "call", "127.0.0.1:1", "kv.get", R"(["k"])"});
  CHECK(conn.exit_code == 3);
  CHECK(conn.err == "sojourn: error: cannot connect to 127.0.0.1:1: Connection refused\n");
  auto remote = run({cli, "eval", node.address, "-e", "while true do end", "--cpu", "100000"});
  CHECK(remote.exit_code == 4);
  CHECK(remote.err == "sojourn: error: CPU limit of 100000 instructions exceeded\n");
  auto remote_json = run({cli, "eval", node.address, "-e", "error('nope')", "--json"});
  CHECK(remote_json.exit_code == 4);
  CHECK(remote_json.out == R"({"ok":false,"error":{"code":"lua_error","message":"Lua error at eval:1: nope"}})" "\n");
}

TEST_CASE("sojourn info shows the node's name and services") {
  DaemonNode node;
  auto info = run({cli, "info", node.address, "--json"});
  CHECK(info.exit_code == 0);
  CHECK(info.out.find("\"name\":\"a\"") != std::string::npos);
  CHECK(info.out.find("\"kv.get\"") != std::string::npos);
}

TEST_CASE("sojourn node stops cleanly on SIGTERM and on SIGINT") {
  for (int sig : {SIGTERM, SIGINT}) {
    DaemonNode node;
    REQUIRE(run({cli, "call", node.address, "kv.keys"}).exit_code == 0);
    node.process.signal(sig);
    CHECK(node.process.read_line(5000) == std::string("node a stopping (") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + ")");
    CHECK(node.process.read_line(5000) == "node a stopped after serving 1 calls and 0 evaluations");
    CHECK(node.process.wait() == 0);
  }
}

TEST_CASE("sojourn launch --wait runs an agent through three node processes and prints its itinerary") {
  DaemonNode a("a", {"--data", R"(price=1)"});
  DaemonNode b("b", {"--data", R"(price=2)"});
  DaemonNode c("c", {"--data", R"(price=3)"});
  std::string path = "cli_test_agent.lua";
  std::ofstream(path) << "local M = {}\n"
                         "function M.start(s) s.sum = 0; return M.visit(s) end\n"
                         "function M.visit(s)\n"
                         "  s.sum = s.sum + node.call('kv.get', 'price')\n"
                         "  agent.log('sum ' .. s.sum)\n"
                         "  if agent.itinerary[1] then agent.go(agent.itinerary[1], 'visit') end\n"
                         "  return s.sum * s.factor\n"
                         "end\n"
                         "return M\n";
  auto r = run({cli, "launch", path, "--at", a.address, "--itinerary", b.address + "," + c.address, "--state",
                R"({"factor": 10})", "--wait"});
  CHECK(r.exit_code == 0);
  CHECK(r.out.find(" finished at " + c.address + " (epoch 2)\n") != std::string::npos);
  CHECK(r.out.find("result: 60\n") != std::string::npos);
  CHECK(r.out.find("itinerary (3 stops):") != std::string::npos);
  CHECK(r.out.find("log: " + b.address + ": sum 3\n") != std::string::npos);
  auto j = run({cli, "launch", path, "--at", a.address, "--itinerary", b.address, "--state", R"({"factor": 1})", "--wait",
                "--json"});
  CHECK(j.exit_code == 0);
  CHECK(j.out.rfind(R"({"ok":true,"agent":{)", 0) == 0);
  CHECK(j.out.find(R"("result":[3])") != std::string::npos);
}

TEST_CASE("sojourn fetch runs a published module on local data; ps, send and locate follow a parked agent") {
  std::string module = "cli_test_sum.lua";
  std::ofstream(module) << "local t = node.call('kv.get', 'xs'); local s = 0\n"
                           "for _, v in ipairs(t) do s = s + v end; return s\n";
  DaemonNode a("a", {"--publish", "sum=" + module});
  const std::string cache = "cli_test_cache";
  std::filesystem::remove_all(cache);
  auto f = run({cli, "fetch", a.address, "sum", "--cache", cache, "--data", "xs=[1,2,3]"});
  CHECK(f.exit_code == 0);
  CHECK(f.out == "6\n");
  CHECK(f.err.find("bytes of code") != std::string::npos);
  auto again = run({cli, "fetch", a.address, "sum", "--cache", cache, "--data", "xs=[5]"});
  CHECK(again.out == "5\n");
  CHECK(again.err.find("cached here, no code sent") != std::string::npos);
  auto bad = run({cli, "fetch", a.address, "../sum"});
  CHECK(bad.exit_code == 4);
  CHECK(bad.err == "sojourn: error: bad bundle: invalid module name '../sum'\n");

  std::string path = "cli_test_parked.lua";
  std::ofstream(path) << "function start(s) local m = agent.receive(); if not m then agent.wait('start') end; return m.n + 1 end\n";
  auto launched = run({cli, "launch", path, "--at", a.address});
  REQUIRE(launched.exit_code == 0);
  const std::string id = launched.out.substr(0, 32);
  std::string ps;
  for (int i = 0; i < 100 && ps.find("waiting for a message") == std::string::npos; ++i) {
    ps = run({cli, "ps", a.address}).out;
  }
  CHECK(ps.find(id) != std::string::npos);
  CHECK(ps.find("waiting for a message") != std::string::npos);
  auto where = run({cli, "locate", id, "--home", a.address});
  CHECK(where.out == id + " running at " + a.address + " (epoch 0)\n");
  auto sent = run({cli, "send", id, R"({"n": 41})", "--home", a.address});
  CHECK(sent.exit_code == 0);
  auto done = run({cli, "wait", id, "--home", a.address});
  CHECK(done.exit_code == 0);
  CHECK(done.out.find("result: 42\n") != std::string::npos);
  auto unknown = run({cli, "locate", std::string(32, '0'), "--home", a.address});
  CHECK(unknown.exit_code == 4);
  CHECK(unknown.err == "sojourn: error: no such agent: " + std::string(32, '0') + "\n");
}
