// The `sojourn` command end to end: a real `sojourn node` process, then `call`,
// `eval` and `info` against it, checking stdout, stderr and exit codes.
#include <doctest/doctest.h>

#include <filesystem>
#include <regex>

#include "sojourn/core/json.hpp"
#include "tests/support/daemon_node.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

using sojourn::test::Process;
using sojourn::test::run;
using sojourn::test::TempDir;

namespace {

const std::string cli = SOJOURN_CLI_PATH;

// The node most tests call: `sojourn node` named "a" unless told.
struct DaemonNode : sojourn::test::DaemonNode {
  explicit DaemonNode(const std::string& name = "a", const std::vector<std::string>& extra = {})
      : sojourn::test::DaemonNode(cli, name, extra) {}
};

}  // namespace

TEST_CASE("the CLI tests write their files in a temporary directory outside the source tree") {
  TempDir dir;
  CHECK(std::filesystem::is_directory(dir.path()));
  CHECK_FALSE(sojourn::test::is_inside(dir.path(), SOJOURN_SOURCE_DIR));
  CHECK(sojourn::test::is_inside(dir / "x.lua", dir.path()));
  CHECK_FALSE(sojourn::test::is_inside(dir.path() + "-other/x.lua", dir.path()));
  std::string kept = dir.path();
  { TempDir gone; kept = gone.write("f.lua", "return 1\n"); }
  CHECK_FALSE(std::filesystem::exists(kept));  // removed with its directory
}

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
  TempDir dir;
  const std::string path = dir.write("chunk.lua", "local a, b = ...\nreturn a * b, 'done'\n");
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

TEST_CASE("an empty table prints as [] in plain and JSON output, as do no results") {
  DaemonNode node("a", {"--peer-isolation", "process"});
  const std::string code = "local t = {1, x = 2}; t[1] = nil; t.x = nil; return {}, {a = {}}, t";
  auto plain = run({cli, "eval", node.address, "-e", code});
  CHECK(plain.exit_code == 0);
  CHECK(plain.out == "[]\n{\"a\":[]}\n[]\n");
  auto json = run({cli, "eval", node.address, "-e", code, "--json"});
  CHECK(json.out == R"({"ok":true,"results":[[],{"a":[]},[]],"isolation":"process"})" "\n");
  auto none = run({cli, "eval", node.address, "-e", "return", "--json"});
  CHECK(none.out == R"({"ok":true,"results":[],"isolation":"process"})" "\n");
  REQUIRE(run({cli, "call", node.address, "kv.put", R"(["k", {}])"}).exit_code == 0);
  CHECK(run({cli, "call", node.address, "kv.get", R"(["k"])"}).out == "[]\n");
  CHECK(run({cli, "ps", node.address, "--json"}).out == R"({"ok":true,"agents":[]})" "\n");
}

TEST_CASE("sojourn --version prints the project's version, and the commit when built from git") {
  auto v = run({cli, "--version"});
  CHECK(v.exit_code == 0);
  CHECK(v.err == "");
  CHECK(std::regex_match(v.out, std::regex("sojourn " SOJOURN_VERSION "( \\(commit [0-9a-f]{7,40}\\))?\n")));
}

TEST_CASE("log lines carry an ISO 8601 UTC time; --log-format json writes one JSON object a line") {
  const std::regex iso("\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z");
  for (const std::string format : {"text", "json"}) {
    CAPTURE(format);
    Process p({cli, "--log-format", format, "node", "--listen", "127.0.0.1:0", "--name", "a", "--grace-ms", "500"});
    REQUIRE(p.started());
    (void)sojourn::test::listening_address(p, "a");
    p.signal(SIGTERM);
    CHECK(p.wait() == 0);
    p.drain();
    REQUIRE(p.err().find("PLAIN TCP on 127.0.0.1:") != std::string::npos);  // a warning every such node logs
    std::size_t lines = 0;
    for (std::size_t at = 0, nl; (nl = p.err().find('\n', at)) != std::string::npos; at = nl + 1, ++lines) {
      const std::string text = p.err().substr(at, nl - at);
      CAPTURE(text);
      if (format == "text") {
        CHECK(text.size() > 24);
        CHECK(std::regex_match(text.substr(0, 24), iso));
        CHECK(text.substr(24, 1) == " ");
        continue;
      }
      auto obj = sojourn::value_from_json(text);
      REQUIRE(obj.ok());
      CHECK(std::regex_match(obj->get("time").as_string(), iso));
      CHECK(obj->get("level").is_string());
      CHECK(obj->get("component").is_string());
      CHECK(obj->get("message").is_string());
    }
    CHECK(lines >= 1);
  }
  auto bad = run({cli, "--log-format", "xml", "call", "127.0.0.1:1", "kv.keys"});
  CHECK(bad.exit_code == 2);
  CHECK(bad.err == "sojourn: error: unknown log format 'xml' (text or json)\n");
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
  TempDir dir;
  const std::string path = dir.write("agent.lua",
                                     "local M = {}\n"
                                     "function M.start(s) s.sum = 0; return M.visit(s) end\n"
                                     "function M.visit(s)\n"
                                     "  s.sum = s.sum + node.call('kv.get', 'price')\n"
                                     "  agent.log('sum ' .. s.sum)\n"
                                     "  if agent.itinerary[1] then agent.go(agent.itinerary[1], 'visit') end\n"
                                     "  return s.sum * s.factor\n"
                                     "end\n"
                                     "return M\n");
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

TEST_CASE("sojourn launch --strong moves an agent at the next line and the itinerary shows its images") {
  DaemonNode a("a", {"--data", R"(price=1)", "--peer-isolation", "process"});
  DaemonNode b("b", {"--data", R"(price=2)", "--peer-isolation", "process"});
  DaemonNode c("c", {"--data", R"(price=3)", "--peer-isolation", "process"});
  TempDir dir;
  const std::string path = dir.write("tour.lua",
                                     "function start(state)\n"
                                     "  local sum = node.call('kv.get', 'price')\n"
                                     "  for _, stop in ipairs(state.stops) do\n"
                                     "    agent.go(stop)\n"
                                     "    sum = sum + node.call('kv.get', 'price')\n"
                                     "  end\n"
                                     "  return sum\n"
                                     "end\n");
  const std::string state = R"({"stops": [")" + b.address + R"(", ")" + c.address + R"("]})";
  auto r = run({cli, "launch", path, "--at", a.address, "--strong", "--state", state, "--wait"});
  CHECK(r.exit_code == 0);
  CHECK(r.out.find(" finished at " + c.address + " (epoch 2)\n") != std::string::npos);
  CHECK(r.out.find("result: 6\n") != std::string::npos);
  CHECK(r.out.find("mobility  image_raw image_wire  image_us restore_us") != std::string::npos);
  CHECK(r.out.find(" process   strong ") != std::string::npos);
  DaemonNode t("t", {"--peer-isolation", "trusted"});
  auto refused = run({cli, "launch", path, "--at", t.address, "--strong"});
  CHECK(refused.exit_code != 0);
  CHECK(refused.err.find("strong mobility needs the process or microvm level (trusted: ") != std::string::npos);
}

TEST_CASE("sojourn fetch runs a published module on local data; ps, send and locate follow a parked agent") {
  TempDir dir;
  const std::string module = dir.write("sum.lua",
                                       "local t = node.call('kv.get', 'xs'); local s = 0\n"
                                       "for _, v in ipairs(t) do s = s + v end; return s\n");
  DaemonNode a("a", {"--publish", "sum=" + module});
  const std::string cache = dir / "cache";
  auto f = run({cli, "fetch", a.address, "sum", "--cache", cache, "--data", "xs=[1,2,3]"});
  CHECK(f.exit_code == 0);
  CHECK(f.out == "6\n");
  CHECK(f.err.find("bytes of code") != std::string::npos);
  auto again = run({cli, "fetch", a.address, "sum", "--cache", cache, "--data", "xs=[5]"});
  CHECK(again.out == "5\n");
  CHECK(again.err.find("cached here, no code sent") != std::string::npos);
  auto bad = run({cli, "fetch", a.address, "../sum", "--cache", cache});
  CHECK(bad.exit_code == 4);
  CHECK(bad.err == "sojourn: error: bad bundle: invalid module name '../sum'\n");

  const std::string path =
      dir.write("parked.lua", "function start(s) local m = agent.receive(); if not m then agent.wait('start') end; return m.n + 1 end\n");
  auto launched = run({cli, "launch", path, "--at", a.address});
  REQUIRE(launched.exit_code == 0);
  const std::string id = launched.out.substr(0, 32);
  std::string ps;
  for (int i = 0; i < 100 && ps.find(" asleep") == std::string::npos; ++i) {
    ps = run({cli, "ps", a.address}).out;
  }
  CHECK(ps.find(id) != std::string::npos);
  CHECK(ps.find(" asleep") != std::string::npos);
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
