// Durable hand-overs (issue 16, docs/reliability.md): a destination restarted on its data dir
// still deduplicates by (id, epoch) (its COMMITs are in the store) and remembers the nonces
// it accepted, and an end report owed to an unreachable home outlives a restart of the node
// the agent ended at.
#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <thread>

#include "agents/agent_messages.hpp"
#include "agents/node_testing.hpp"
#include "agents/trust.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"
#include "sojourn/core/signature.hpp"
#include "tests/support/parked_agent.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/trust_nodes.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::TempDir;

namespace {

// At the destination: counts its visit in the kv store, then parks.
constexpr const char* kVisitor = R"(local M = {}
function M.start(s) agent.go(agent.itinerary[1], "visit") end
function M.visit(s)
  node.call("kv.put", "visits", (node.call("kv.get", "visits") or 0) + 1)
  agent.wait("visit")
end
return M)";

NodeOptions handover_options(const std::string& name, const std::string& data_dir) {
  NodeOptions o;
  o.name = name;
  o.peer_isolation = Isolation::trusted;  // what is tested is the store, not the jail
  o.data_dir = data_dir;
  o.default_limits.wall_ms = 60'000;  // a step held by the test outlasts a slow machine
  return o;
}

std::unique_ptr<Node> start_at(const std::string& name, const std::string& data_dir, const std::string& address) {
  auto node = std::make_unique<Node>(handover_options(name, data_dir));
  auto bound = node->listen(address);
  REQUIRE(bound.ok());
  return node;
}

}  // namespace

TEST_CASE("a destination restarted on its data dir answers a retried TRANSFER of an agent it took with its COMMIT") {
  TempDir dir;
  auto home = start_at("home", dir / "home", "127.0.0.1:0");
  auto bundle = single_file_bundle("visitor", kVisitor);
  REQUIRE(bundle.ok());
  std::string dest_address, dest_id, id;
  {
    auto dest = start_at("dest", dir / "dest", "127.0.0.1:0");
    dest_address = dest->advertised_address();
    dest_id = dest->node_id();
    id = test::launch_parked(*home, *dest, *bundle);
    CHECK(dest->stats().commits_remembered == 1);
  }  // the destination goes away, the agent parked on it
  auto dest = start_at("dest", dir / "dest", dest_address);
  CHECK(dest->node_id() == dest_id);
  CHECK(dest->stats().commits_remembered == 1);  // taken back from the store

  // A source that never heard the COMMIT sends epoch 1 again, with a fresh nonce (and no
  // bundle, which the destination does not have under this hash): answered with the earlier
  // COMMIT, not a BundleWanted.
  AgentTransfer transfer;
  transfer.record.id = id;
  transfer.record.epoch = 1;
  transfer.record.home = home->advertised_address();
  transfer.record.owner = "anonymous";
  transfer.record.bundle_hash = std::string(64, 'a');
  transfer.record.entry = "visit";
  transfer.record.state = Value::table();
  transfer.record.max_hops = 10;
  transfer.to = destination_for(dest_id);
  transfer.nonce = random_nonce();
  transfer.expires_unix_ms = unix_ms_now() + 30'000;
  auto committed = home->call(dest_address, "agent.transfer", transfer_call_args(transfer));
  INFO((committed.ok() ? std::string() : committed.error().message));
  REQUIRE(committed.ok());
  auto commit = decode_message<AgentCommit, decode_commit>(*committed, "the COMMIT");
  REQUIRE(commit.ok());
  CHECK(commit->id == id);
  CHECK(commit->epoch == 1);
  CHECK(commit->node == dest_address);
  // An older epoch is refused as stale: the highest epoch came back too.
  transfer.record.epoch = 0;
  transfer.nonce = random_nonce();
  auto stale = home->call(dest_address, "agent.transfer", transfer_call_args(transfer));
  REQUIRE_FALSE(stale.ok());
  CHECK(stale.error().code == Errc::stale_epoch);

  // Taken once: one agent there, its one visit counted once.
  REQUIRE(test::holds_one(*dest, AgentState::asleep));
  auto visits = dest->call_local("kv.get", Value::array({"visits"}));
  REQUIRE(visits.ok());
  REQUIRE(visits->is_integer());
  CHECK(visits->as_integer() == 1);
}

TEST_CASE("an end report owed to an unreachable home outlives a restart of the node the agent ended at") {
  TempDir dir;
  // At the host: holds its step until the test lets it go, then ends there.
  const char* source = R"(local M = {}
function M.start(s) agent.go(agent.itinerary[1], "work") end
function M.work(s)
  while node.call("kv.get", "release") == nil do end
  return "done", agent.epoch
end
return M)";
  auto bundle = single_file_bundle("ender", source);
  REQUIRE(bundle.ok());
  std::string home_address, host_address, id;
  {
    auto home = start_at("home", dir / "home", "127.0.0.1:0");
    home_address = home->advertised_address();
    auto host = start_at("host", dir / "host", "127.0.0.1:0");
    host_address = host->advertised_address();
    AgentLaunch l;
    l.bundle = *bundle;
    l.itinerary = {host_address};
    auto launched = home->launch(home_address, l);
    REQUIRE(launched.ok());
    id = *launched;
    REQUIRE(test::holds_one(*host, AgentState::running));
    home.reset();  // the home goes away
    REQUIRE(host->call_local("kv.put", Value::array({"release", true})).ok());
    // Ended at the host; its report cannot reach the home.
    for (int i = 0; i < 1000 && !host->list_agents()->empty(); ++i) std::this_thread::sleep_for(10ms);
    REQUIRE(host->list_agents()->empty());
  }  // and so does the host, before the home could hear of the end
  auto home = start_at("home", dir / "home", home_address);
  auto status = home->agent_status(home_address, id);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::running);  // what it knew before
  auto host = start_at("host", dir / "host", host_address);
  auto s = home->wait_agent(home_address, id, 20s);
  REQUIRE(s.ok());
  INFO(s->reason);
  REQUIRE(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_string() == "done");
  CHECK(s->result.get(2).as_integer() == 1);
  CHECK(s->location == host_address);
}

TEST_CASE("a signed evaluation replayed after its node restarted on its data dir is refused as a replay") {
  TempDir dir;
  auto author = test::new_key();
  EvalRequest request;
  request.source = "node.call('kv.put', 'runs', (node.call('kv.get', 'runs') or 0) + 1) return 'ran'";
  request.args = Value::table();
  std::string address;
  {
    auto server = start_at("server", dir.path(), "127.0.0.1:0");
    address = server->advertised_address();
    request.destination = destination_for(server->node_id());
    sign_eval(request, *author, 60s);
    auto first = test::exchange_frame(test::port_of(address), FrameKind::eval, 1, encode(request));
    INFO(first.message);
    REQUIRE(first.code == Errc::ok);
  }
  auto server = start_at("server", dir.path(), address);
  auto again = test::exchange_frame(test::port_of(address), FrameKind::eval, 2, encode(request));
  CHECK(again.code == Errc::replayed);
  CHECK(again.message == "replayed: remote evaluation with nonce " + request.nonce.substr(0, 16) + " was accepted before");
  auto runs = server->call_local("kv.get", Value::array({"runs"}));
  REQUIRE(runs.ok());
  CHECK(runs->as_integer() == 1);
}

TEST_CASE("a destination's stored COMMITs and nonces leave its store on the schedule they leave its memory") {
  TempDir dir;
  NodeOptions ho = handover_options("home", dir / "home");
  ho.transfer_lifetime = 2s;  // within the destination's max_message_lifetime
  Node home(ho);
  REQUIRE(home.listen("127.0.0.1:0").ok());
  std::atomic<std::int64_t> ahead_ms{0};  // the destination's expiry clock runs ahead by this
  NodeOptions o = handover_options("dest", dir / "dest");
  o.max_message_lifetime = 5s;
  o.prune_interval = 50ms;
  o.expiry_clock = [&ahead_ms] { return unix_ms_now() + ahead_ms.load(); };
  Node dest(o);
  REQUIRE(dest.listen("127.0.0.1:0").ok());
  auto bundle = single_file_bundle("parker", R"(local M = {}
function M.start(s) agent.go(agent.itinerary[1], "park") end
function M.park(s) agent.wait("park") end
return M)");
  REQUIRE(bundle.ok());
  test::launch_parked(home, dest, *bundle);
  const std::string db = dir / "dest/sojourn.db";
  auto rows = [&db](const char* table) {
    auto r = test::run({"/usr/bin/sqlite3", db, std::string("SELECT count(*) FROM ") + table + ";"});
    REQUIRE(r.exit_code == 0);
    return r.out;
  };
  CHECK(rows("commits") == "1\n");
  CHECK(rows("nonces") == "1\n");
  CHECK(dest.stats().commits_remembered == 1);
  ahead_ms = 6'000;  // past the COMMIT's retention and the TRANSFER's expiry
  for (int i = 0; i < 500 && dest.stats().commits_remembered != 0; ++i) std::this_thread::sleep_for(10ms);
  CHECK(dest.stats().commits_remembered == 0);
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = rows("commits") == "0\n" && rows("nonces") == "0\n";
    if (!gone) std::this_thread::sleep_for(20ms);
  }
  CHECK(gone);
  CHECK(rows("residents") == "1\n");  // the agent itself stays
}

TEST_CASE("a source whose TRANSFER may have been taken never offers the agent to a fallback, only to that destination again") {
  // The destination commits the TRANSFER but its COMMIT is lost, and it answers nothing for a
  // while after (longer than the source's few retries); then it answers again.
  auto dest = std::make_unique<Node>(handover_options("dest", ""));
  REQUIRE(dest->listen("127.0.0.1:0").ok());
  std::atomic<bool> taken{false}, healed{false};
  std::atomic<int> transfers{0};
  testing::set_fault_hooks(*dest, [&](std::string_view service) {
    // The first TRANSFER hears its BundleWanted; the one with the code is committed and its
    // COMMIT lost, and so is every retry's, until healed.
    if (service != "agent.transfer" || ++transfers == 1) return false;
    taken = true;
    return !healed.load();
  });
  auto fallback = std::make_unique<Node>(handover_options("fallback", ""));
  REQUIRE(fallback->listen("127.0.0.1:0").ok());
  auto source = std::make_unique<Node>(handover_options("source", ""));
  REQUIRE(source->listen("127.0.0.1:0").ok());
  auto bundle = single_file_bundle("visitor", kVisitor);
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {dest->advertised_address(), fallback->advertised_address()};
  auto id = source->launch(source->advertised_address(), l);
  REQUIRE(id.ok());
  REQUIRE(test::holds_one(*dest, AgentState::asleep));  // it arrived, its COMMIT was not heard
  // Past the source's 3 retries (50 + 100 + 200 ms): it still sends to the destination only.
  std::this_thread::sleep_for(1500ms);
  CHECK(fallback->list_agents()->empty());
  CHECK(source->list_agents()->size() == 1);  // moving, kept until the destination answers
  healed = true;  // the next TRANSFER hears the earlier COMMIT: the source lets its copy go
  for (int i = 0; i < 1000 && !source->list_agents()->empty(); ++i) std::this_thread::sleep_for(10ms);
  CHECK(source->list_agents()->empty());
  CHECK(fallback->list_agents()->empty());
  CHECK(fallback->call_local("kv.get", Value::array({"visits"}))->is_nil());
  CHECK(dest->call_local("kv.get", Value::array({"visits"}))->as_integer() == 1);
  auto status = source->agent_status(source->advertised_address(), *id);
  REQUIRE(status.ok());
  CHECK(status->location == dest->advertised_address());
}

TEST_CASE("a destination restarted on its data dir reports the agents asleep in its store to their homes again") {
  // The report of an arrival leaves as the agent's first step starts: that step may be over
  // (the agent asleep, in the store) before the report got through, and the node may go
  // away then. After a restart the home hears it again.
  TempDir dir;
  std::atomic<int> reports{0};
  auto home = start_at("home", dir / "home", "127.0.0.1:0");
  testing::set_fault_hooks(*home, {}, [&](std::string_view service) {
    if (service == "agent.arrived") ++reports;
    return std::chrono::milliseconds(0);
  });
  auto bundle = single_file_bundle("visitor", kVisitor);
  REQUIRE(bundle.ok());
  std::string dest_address, id;
  {
    auto dest = start_at("dest", dir / "dest", "127.0.0.1:0");
    dest_address = dest->advertised_address();
    id = test::launch_parked(*home, *dest, *bundle);
    for (int i = 0; i < 3000 && reports.load() == 0; ++i) std::this_thread::sleep_for(10ms);
    REQUIRE(reports.load() >= 1);
  }
  reports = 0;
  auto dest = start_at("dest", dir / "dest", dest_address);
  REQUIRE(test::holds_one(*dest, AgentState::asleep));
  for (int i = 0; i < 3000 && reports.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  CHECK(reports.load() >= 1);
  auto status = home->agent_status(home->advertised_address(), id);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::running);
  CHECK(status->location == dest_address);
  CHECK(status->epoch == 1);
  // Still its home's: a message wakes it there (it never takes the message, so it visits
  // again and again; once is what is checked).
  REQUIRE(home->send_to_agent(home->advertised_address(), id, Value("wake")).ok());
  bool counted = false;
  for (int i = 0; i < 3000 && !counted; ++i) {
    auto visits = dest->call_local("kv.get", Value::array({"visits"}));
    counted = visits.ok() && visits->is_integer() && visits->as_integer() >= 2;
    if (!counted) std::this_thread::sleep_for(10ms);
  }
  CHECK(counted);
}
