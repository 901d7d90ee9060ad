// The `sojourn` command end to end: a real `sojourn node` process, then `call`,
// `eval` and `info` against it, checking stdout, stderr and exit codes.
#include <doctest/doctest.h>

#include <fstream>

#include "support/process.hpp"

using sojourn::test::Process;
using sojourn::test::run;

namespace {

const std::string cli = SOJOURN_CLI_PATH;

struct DaemonNode {
  Process process{{cli, "node", "--listen", "127.0.0.1:0", "--name", "a", "--grace-ms", "2000"}};
  std::string address;
  DaemonNode() {
    REQUIRE(process.started());
    std::string line = process.read_line(10000);
    const std::string prefix = "node a listening on ";
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
  DaemonNode node;
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
  CHECK(j.out == "{\"ok\":true,\"results\":[42,\"done\"]}\n");
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
