// Bounded runtime state (docs/migration.md, "What a node remembers"): COMMITs and ended
// agents are forgotten after their retention, duplicates within it are still answered, and
// wait_agent is woken by the agent's end instead of polling its home.
#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <thread>

#include "agents/agent_messages.hpp"
#include "sojourn/agents/node.hpp"
#include "tests/support/cluster.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Cluster;
using sojourn::test::unix_now_ms;

namespace {

// A hand-made TRANSFER of a new agent (epoch 1) to `to`, expiring 30 s after `now_ms`, as
// agent.transfer's arguments.
Value transfer_of(const std::string& agent_id, const std::string& home, const std::string& to, std::int64_t now_ms,
                  const std::string& nonce) {
  auto bundle = single_file_bundle("park", "function start(s) agent.wait('start') end");
  REQUIRE(bundle.ok());
  auto bytes = encode_bundle(*bundle);
  AgentTransfer transfer;
  transfer.record.id = agent_id;
  transfer.record.home = home;
  transfer.record.owner = "t";
  transfer.record.bundle_hash = sha256_hex(bytes);
  transfer.record.entry = "start";
  transfer.record.state = Value::table();
  transfer.record.epoch = 1;
  transfer.record.max_hops = 4;
  transfer.bundle_bytes = std::string(bytes.begin(), bytes.end());
  transfer.to = to;
  transfer.nonce = nonce;
  transfer.expires_unix_ms = now_ms + 30'000;
  return transfer_call_args(transfer);
}

std::string launch_tour(Node& from, const std::string& at, std::vector<std::string> itinerary) {
  auto bundle = single_file_bundle("hop", "function start(s) local n = agent.itinerary[1]\n"
                                          "if n then agent.go(n, 'done') end end\n"
                                          "function done(s) return agent.here end");
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = std::move(itinerary);
  auto id = from.launch(at, l);
  REQUIRE_MESSAGE(id.ok(), id.error().message);
  return *id;
}

}  // namespace

TEST_CASE("a destination answers a duplicate TRANSFER within the lifetime and forgets the COMMIT after it") {
  std::atomic<std::int64_t> skew{0};
  Cluster c(2, [&](int i, NodeOptions& o) {
    o.peer_isolation = Isolation::trusted;  // no guest binary needed: the jail is not the point
    if (i == 1) {
      o.max_message_lifetime = 60'000ms;
      o.expiry_clock = [&] { return unix_now_ms() + skew.load(); };
    }
  });
  // Agents that end at node 1: each leaves a COMMIT there.
  constexpr int kAgents = 6;
  for (int i = 0; i < kAgents; ++i) {
    auto s = c[0].wait_agent(c.addr[0], launch_tour(c[0], c.addr[0], {c.addr[1]}), 10s);
    REQUIRE(s.ok());
    REQUIRE(s->status == AgentState::finished);
  }
  CHECK(c[1].stats().commits_remembered == kAgents);

  const std::string parked(32, 'b');
  Value first = transfer_of(parked, c.addr[0], c[1].node_id(), unix_now_ms(), std::string(32, '1'));
  auto commit = c[0].call(c.addr[1], "agent.transfer", first);
  REQUIRE(commit.ok());
  // Within the lifetime: the same COMMIT, no second agent.
  auto again = c[0].call(c.addr[1], "agent.transfer", first);
  REQUIRE(again.ok());
  CHECK(deep_equal(*commit, *again));
  CHECK(c[1].stats().agents_resident == 1);
  CHECK(c[1].stats().commits_remembered == kAgents + 1);

  // Past the lifetime: the next hand-over prunes them all, and the forgotten TRANSFER is
  // refused by its expiry before any dedup is needed.
  skew = 61'000;
  Value next = transfer_of(std::string(32, 'c'), c.addr[0], c[1].node_id(), unix_now_ms() + skew.load(), std::string(32, '2'));
  REQUIRE(c[0].call(c.addr[1], "agent.transfer", next).ok());
  CHECK(c[1].stats().commits_remembered == 1);
  auto replay = c[0].call(c.addr[1], "agent.transfer", first);
  REQUIRE_FALSE(replay.ok());
  CHECK(replay.error().code == Errc::expired);
  CHECK(c[1].stats().agents_resident == 2);  // the parked ones, once each
}

TEST_CASE("an idle destination forgets its COMMITs, highest epochs and TRANSFER nonces on the sweep alone") {
  std::atomic<std::int64_t> skew{0};
  Cluster c(2, [&](int i, NodeOptions& o) {
    o.peer_isolation = Isolation::trusted;
    if (i == 1) {
      o.max_message_lifetime = 60'000ms;
      o.prune_interval = 50ms;
      o.expiry_clock = [&] { return unix_now_ms() + skew.load(); };
    }
  });
  Value transfer = transfer_of(std::string(32, 'd'), c.addr[0], c[1].node_id(), unix_now_ms(), std::string(32, '3'));
  REQUIRE(c[0].call(c.addr[1], "agent.transfer", transfer).ok());
  NodeStats s = c[1].stats();
  CHECK(s.commits_remembered == 1);
  CHECK(s.epochs_remembered == 1);
  CHECK(s.nonces_remembered == 1);
  // Past the TRANSFER's expiry (30 s) and the lifetime (60 s), with no request coming: the
  // timer's sweep alone forgets all three (the replay guard used to prune only on a new nonce).
  skew = 61'000;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < until) {
    s = c[1].stats();
    if (s.commits_remembered + s.epochs_remembered + s.nonces_remembered == 0) break;
    std::this_thread::sleep_for(20ms);
  }
  CHECK(s.commits_remembered == 0);
  CHECK(s.epochs_remembered == 0);
  CHECK(s.nonces_remembered == 0);
  CHECK(s.agents_resident == 1);  // the agent itself is still parked there: only its hand-over is forgotten
}

TEST_CASE("a home forgets an ended agent after its result was read, and then answers no_such_agent") {
  std::atomic<std::int64_t> skew{0};
  Cluster c(2, [&](int i, NodeOptions& o) {
    o.peer_isolation = Isolation::trusted;
    if (i == 0) {
      o.read_agent_retention = 1'000ms;
      o.ended_agent_retention = 10'000ms;
      o.expiry_clock = [&] { return unix_now_ms() + skew.load(); };
    }
  });
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(launch_tour(c[0], c.addr[0], {c.addr[1]}));
    auto s = c[0].wait_agent(c.addr[0], ids.back(), 10s);  // reads the result
    REQUIRE(s.ok());
    REQUIRE(s->status == AgentState::finished);
  }
  // One more that ends but whose result nobody reads.
  const std::string unread = launch_tour(c[0], c.addr[0], {c.addr[1]});
  std::this_thread::sleep_for(300ms);  // it ends (unread) well before the clock moves
  CHECK(c[0].stats().agents_tracked == 6);
  // Read again within the retention: still there.
  CHECK(c[0].agent_status(c.addr[0], ids[0]).ok());

  skew = 1'500;
  auto gone = c[0].agent_status(c.addr[0], ids[0]);
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error() == errors::no_such_agent(ids[0]));
  auto waited = c[1].wait_agent(c.addr[0], ids[1], 1s);
  REQUIRE_FALSE(waited.ok());
  CHECK(waited.error().code == Errc::no_such_agent);
  // The unread one waits for ended_agent_retention: wait for it to end first.
  CHECK(c[0].stats().agents_tracked >= 1);
  skew = 20'000;
  auto unread_status = c[0].agent_status(c.addr[0], unread);
  REQUIRE_FALSE(unread_status.ok());
  CHECK(unread_status.error().code == Errc::no_such_agent);
  CHECK(c[0].stats().agents_tracked == 0);
}

TEST_CASE("wait_agent returns when the agent finishes, asking its home once rather than polling") {
  Cluster c(2, [](int, NodeOptions& o) { o.peer_isolation = Isolation::trusted; });
  auto bundle = single_file_bundle("parked", "function start(s) local m = agent.receive()\n"
                                             "if m == nil then agent.wait('start') end\nreturn m end");
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  auto id = c[1].launch(c.addr[0], l);  // launched by node 1: it may see the agent
  REQUIRE_MESSAGE(id.ok(), id.error().message);
  const auto calls_before = c[0].stats().calls_served;
  auto waiting = std::async(std::launch::async, [&] { return c[1].wait_agent(c.addr[0], *id, 30s); });
  auto local = std::async(std::launch::async, [&] { return c[0].wait_agent(c.addr[0], *id, 30s); });
  // Long enough for a polling waiter to have asked many times.
  CHECK(waiting.wait_for(500ms) == std::future_status::timeout);
  const auto sent_at = std::chrono::steady_clock::now();
  REQUIRE(c[0].send_to_agent(c.addr[0], *id, Value(7)).ok());
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  const auto took = std::chrono::steady_clock::now() - sent_at;
  auto s = waiting.get();
  REQUIRE_MESSAGE(s.ok(), s.error().message);
  CHECK(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_integer() == 7);
  CHECK(took < 2s);
  // One agent.wait in flight the whole time (the old loop made an agent.status call every
  // 50 ms); the local waiter makes no call at all.
  CHECK(c[0].stats().calls_served - calls_before <= 2);
  REQUIRE(local.wait_for(5s) == std::future_status::ready);
  auto mine = local.get();
  REQUIRE(mine.ok());
  CHECK(mine->status == AgentState::finished);
}

TEST_CASE("shutdown answers a waiting agent.wait at once instead of after the grace period") {
  Cluster c(2, [](int, NodeOptions& o) { o.peer_isolation = Isolation::trusted; });
  auto bundle = single_file_bundle("parked", "function start(s) agent.wait('start') end");
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  auto id = c[1].launch(c.addr[0], l);
  REQUIRE_MESSAGE(id.ok(), id.error().message);
  auto waiting = std::async(std::launch::async, [&] { return c[1].wait_agent(c.addr[0], *id, 30s); });
  CHECK(waiting.wait_for(300ms) == std::future_status::timeout);
  const auto started = std::chrono::steady_clock::now();
  c[0].shutdown(10s);
  CHECK(std::chrono::steady_clock::now() - started < 5s);
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  CHECK_FALSE(waiting.get().ok());  // its home went away before the agent ended
}
