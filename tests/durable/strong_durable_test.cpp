// Strong agents on a node with a data dir (docs/reliability.md): a strong agent resident
// there is stored with its last heap image, in the transaction of its step's outcome, and a
// `sojourn node` killed with SIGKILL and started again on its data dir resumes it from that
// image (its locals intact); a stored image whose hash is not its record's is refused, and
// the node goes on serving.
#include <doctest/doctest.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/support/daemon_node.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

#ifdef SOJOURN_CLI_PATH
using namespace std::chrono_literals;
using sojourn::test::Process;
using sojourn::test::TempDir;
using sojourn::test::file_text;

namespace {

const std::string cli = SOJOURN_CLI_PATH;

// Reads `input` and counts its starts before its first checkpoint (both committed with it),
// then checkpoints again until `release` is set. Resumed from the checkpoint's image, it
// answers the input it read before and one start; run again from its entry, it would read
// the input as it is now and count two.
constexpr const char* kCheckpointed = R"(local M = {}
function M.start(s)
  local before = node.call("kv.get", "input")
  local starts = (node.call("kv.get", "starts") or 0) + 1
  node.call("kv.put", "starts", starts)
  local squares = {}
  for i = 1, s.n do squares[i] = i * i end
  node.call("kv.put", "phase", "checkpointed")
  agent.checkpoint()
  -- Each wait is a checkpoint of its own (a new step, a new image, the same locals), so no
  -- step's wall-clock limit runs out however slow the machine is.
  while node.call("kv.get", "release") == nil do agent.checkpoint() end
  return before .. " starts=" .. starts .. " last=" .. squares[s.n]
end
return M)";

// `sojourn node` on a data dir, strong agents in the process jail. A restart listens at the
// address the first start was given: the agent's home is that address.
// A source keeps offering a hand-over for long (--migration-retries, --retry-backoff-ms) so
// that a destination down for a while does not strand the agent.
struct Daemon {
  Process process;
  std::string address;
  explicit Daemon(const std::string& data_dir, const std::string& listen = "127.0.0.1:0")
      : process({cli, "node", "--listen", listen, "--name", "s", "--data-dir", data_dir, "--peer-isolation", "process",
                 "--migration-retries", "10", "--retry-backoff-ms", "50"}) {
    REQUIRE(process.started());
    address = sojourn::test::listening_address(process, "s");
  }
};

sojourn::test::RunResult call(const std::string& address, const char* service, const char* args) {
  return sojourn::test::run({cli, "call", address, service, args});
}

// Launches the checkpointing agent, waits until its checkpoint is committed, changes the
// input its entry reads, and kills the node with SIGKILL while it checkpoints on (within a
// step or between two). Returns the agent's id; *address: where the node listened.
std::string launch_checkpoint_and_kill(TempDir& dir, const std::string& data, std::string* address) {
  const std::string agent = dir.write("checkpointed.lua", kCheckpointed);
  Daemon node(data);
  *address = node.address;
  REQUIRE(call(node.address, "kv.put", R"(["input", "first"])").exit_code == 0);
  auto launched = sojourn::test::run({cli, "launch", agent, "--at", node.address, "--strong", "--state", R"({"n": 6})"});
  INFO(launched.out, launched.err);
  REQUIRE(launched.exit_code == 0);
  const std::string first = launched.out.substr(0, launched.out.find('\n'));
  const std::string id = first.substr(first.find_last_of(' ') + 1);
  REQUIRE(id.size() == 32);
  bool checkpointed = false;
  for (int i = 0; i < 600 && !checkpointed; ++i) {
    checkpointed = call(node.address, "kv.get", R"(["phase"])").out == "\"checkpointed\"\n";
    if (!checkpointed) std::this_thread::sleep_for(20ms);
  }
  REQUIRE(checkpointed);
  REQUIRE(call(node.address, "kv.put", R"(["input", "second"])").exit_code == 0);
  node.process.signal(SIGKILL);  // the step after the checkpoint dies with its node
  node.process.wait();
  return id;
}

// Goes to `to` (down when it first tries) with a local read before the go.
constexpr const char* kMover = R"(local M = {}
function M.start(s)
  local before = node.call("kv.get", "input")
  node.call("kv.put", "phase", "going")
  agent.go(s.to)
  return before .. " at " .. agent.here
end
return M)";

}  // namespace

TEST_CASE("a strong agent checkpointed at a node killed with SIGKILL goes on from its image after the restart") {
  TempDir dir;
  const std::string data = dir / "data";
  std::string address;
  const std::string id = launch_checkpoint_and_kill(dir, data, &address);
  Daemon again(data, address);
  REQUIRE(call(again.address, "kv.put", R"(["release", true])").exit_code == 0);
  auto waited = sojourn::test::run({cli, "wait", id, "--home", again.address, "--timeout-ms", "60000"});
  INFO(waited.out, waited.err);
  CHECK(waited.exit_code == 0);
  CHECK(waited.out.find("agent " + id + " finished") != std::string::npos);
  // Its local `before` and its table of squares come from the image; one start only.
  CHECK(waited.out.find("result: \"first starts=1 last=36\"") != std::string::npos);
  CHECK(call(again.address, "kv.get", R"(["starts"])").out == "1\n");
}

TEST_CASE("a stored heap image that does not match its hash is refused by name and the node keeps serving") {
  TempDir dir;
  const std::string data = dir / "data";
  std::string address;
  const std::string id = launch_checkpoint_and_kill(dir, data, &address);
  // The row's last byte is its image's last byte: flip it, as a damaged disk would.
  const std::string row = dir / "row.bin";
  auto out = sojourn::test::run({"/usr/bin/sqlite3", data + "/sojourn.db", "SELECT writefile('" + row + "', value) FROM residents;"});
  REQUIRE(out.exit_code == 0);
  std::string bytes = file_text(row);
  REQUIRE(bytes.size() > 4096);
  bytes.back() = static_cast<char>(bytes.back() ^ 0x5a);
  { std::ofstream(row, std::ios::binary | std::ios::trunc) << bytes; }
  auto in = sojourn::test::run({"/usr/bin/sqlite3", data + "/sojourn.db", "UPDATE residents SET value = readfile('" + row + "');"});
  REQUIRE(in.exit_code == 0);

  Daemon again(data, address);
  CHECK(call(again.address, "kv.get", R"(["input"])").out == "\"second\"\n");
  // Loaded, it would be listed (checkpointing on, waiting for a `release` that never comes).
  auto listed = sojourn::test::run({cli, "ps", again.address});
  CHECK(listed.exit_code == 0);
  CHECK(listed.out.find(id.substr(0, 8)) == std::string::npos);  // never loaded, never run
  CHECK(call(again.address, "kv.get", R"(["starts"])").out == "1\n");
  again.process.signal(SIGTERM);
  again.process.wait();
  again.process.drain(30s);
  const std::string log = again.process.out() + again.process.err();
  INFO(log);
  CHECK(log.find("resident agent " + id + " is kept in " + data + "/sojourn.db but refused: heap image hash mismatch") !=
        std::string::npos);
  // The row is left for an operator to see.
  auto kept = sojourn::test::run({"/usr/bin/sqlite3", data + "/sojourn.db", "SELECT count(*) FROM residents;"});
  CHECK(kept.out == "1\n");
}
#endif

#ifdef SOJOURN_CLI_PATH
TEST_CASE("a strong agent moving from a node killed with SIGKILL is offered again with its image after the restart") {
  TempDir dir;
  std::string to;
  { Daemon b(dir / "b"); to = b.address; }  // an address that nobody answers at for now
  const std::string agent = dir.write("mover.lua", kMover);
  std::string from, id;
  {
    Daemon a(dir / "a");
    from = a.address;
    REQUIRE(call(from, "kv.put", R"(["input", "first"])").exit_code == 0);
    auto launched = sojourn::test::run({cli, "launch", agent, "--at", from, "--strong", "--state", R"({"to": ")" + to + R"("})"});
    INFO(launched.out, launched.err);
    REQUIRE(launched.exit_code == 0);
    const std::string first = launched.out.substr(0, launched.out.find('\n'));
    id = first.substr(first.find_last_of(' ') + 1);
    REQUIRE(id.size() == 32);
    bool going = false;
    for (int i = 0; i < 600 && !going; ++i) {
      going = call(from, "kv.get", R"(["phase"])").out == "\"going\"\n";
      if (!going) std::this_thread::sleep_for(20ms);
    }
    REQUIRE(going);  // committed with its row as moving, its image in it
    REQUIRE(call(from, "kv.put", R"(["input", "second"])").exit_code == 0);
    a.process.signal(SIGKILL);
    a.process.wait();
  }
  Daemon b(dir / "b", to);
  Daemon a(dir / "a", from);
  auto waited = sojourn::test::run({cli, "wait", id, "--home", from, "--timeout-ms", "60000"});
  INFO(waited.out, waited.err);
  CHECK(waited.exit_code == 0);
  CHECK(waited.out.find("agent " + id + " finished") != std::string::npos);
  CHECK(waited.out.find("result: \"first at " + to + "\"") != std::string::npos);
}
#endif
