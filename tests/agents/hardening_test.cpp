// Hardening of trust between nodes (issue 11, items 3, 4 and 9): signed evaluations bound to
// their destination, agent reports only from the node holding the agent, what agent.list and
// agent.status show a caller, the code cache's check-then-store and bound, code.require under
// the policy, and host-measured CPU.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <thread>

#include "agents/agent_messages.hpp"
#include "agents/trust.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/signature.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/raw_socket.hpp"
#include "tests/support/trust_nodes.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

using test::new_key;
using test::policy_from;
using test::port_of;
using test::start_node;

// Sends one hand-made frame on a new connection; returns the node's reply.
Reply send_frame(const std::string& address, FrameKind kind, const std::vector<std::uint8_t>& payload) {
  return test::exchange_frame(port_of(address), kind, 1, payload);
}

}  // namespace

TEST_CASE("a signed evaluation names its destination inside the signed bytes") {
  auto key = new_key();
  EvalRequest e;
  e.source = "return 1";
  e.destination = "127.0.0.1:7001";
  sign_eval(e, *key, 30s);
  auto decoded = decode_eval(encode(e));
  REQUIRE(decoded.ok());
  CHECK(decoded->destination == "127.0.0.1:7001");
  CHECK(verify_eval_signature(*decoded).ok());
  decoded->destination = "127.0.0.1:7002";
  auto moved = verify_eval_signature(*decoded);
  REQUIRE_FALSE(moved.ok());
  CHECK(moved.error().code == Errc::bad_signature);
}

TEST_CASE("a signed evaluation captured on its way to one node is refused at another, and still runs at the first") {
  auto key = new_key();
  auto a = start_node("a");
  auto b = start_node("b");
  EvalRequest request;
  request.source = "return 41 + 1";
  request.destination = a->node_id();  // what Node::eval puts there when it dials a
  sign_eval(request, *key, 30s);
  const std::vector<std::uint8_t> bytes = encode(request);

  Reply at_b = send_frame(b->advertised_address(), FrameKind::eval, bytes);
  CHECK(at_b.code == Errc::replayed);
  CHECK(at_b.message == "replayed: this signed remote evaluation is addressed to node " + a->node_id() +
                            ", not to this node (" + b->node_id() + ")");
  Reply at_a = send_frame(a->advertised_address(), FrameKind::eval, bytes);
  REQUIRE(at_a.code == Errc::ok);
  CHECK(at_a.result.get(1).as_integer() == 42);

  // A signed request addressed to no node is refused too.
  EvalRequest nowhere;
  nowhere.source = "return 1";
  sign_eval(nowhere, *key, 30s);
  Reply r = send_frame(a->advertised_address(), FrameKind::eval, encode(nowhere));
  CHECK(r.code == Errc::replayed);
  CHECK(r.message == "replayed: this signed remote evaluation is addressed to no node, not to this node (" +
                         a->node_id() + ")");

  // Node::eval fills the destination with the id of the node it dials (node.info).
  auto client = start_node("client");
  EvalOptions signed_eval;
  signed_eval.signing_key = key;
  auto ran = client->eval(b->advertised_address(), "return 7", Value::table(), signed_eval);
  REQUIRE(ran.ok());
  CHECK(ran->results.get(1).as_integer() == 7);
}

namespace {

// An agent that goes to its first stop and waits there for one message, which it returns.
constexpr const char* kParker = R"(local M = {}
function M.start(s)
  if agent.itinerary[1] then agent.go(agent.itinerary[1], "park") end
  return M.park(s)
end
function M.park(s)
  local m = agent.receive()
  if m == nil then agent.wait("park") end
  return m
end
return M)";

Bundle bundle_of(const std::string& name, const std::string& source) {
  auto b = single_file_bundle(name, source, {"start", "park"});
  REQUIRE(b.ok());
  return *b;
}

// Waits until `node` has an agent resident and asleep.
void wait_parked(Node& node, const std::string& id) {
  for (int i = 0; i < 500; ++i) {
    auto list = node.list_agents();
    REQUIRE(list.ok());
    for (const auto& a : *list) {
      if (a.id == id && a.status == AgentState::asleep) return;
    }
    std::this_thread::sleep_for(10ms);
  }
  FAIL("agent " << id << " never parked");
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

}  // namespace

TEST_CASE("reports about an agent from a peer that does not hold it are refused at its home, and the real result is kept") {
  test::Cluster c(3);
  AgentLaunch l;
  l.bundle = bundle_of("parker", kParker);
  l.itinerary = {c.addr[1]};
  auto id = c[0].launch(c.addr[0], l);
  REQUIRE(id.ok());
  wait_parked(c[1], *id);

  // n2 never held the agent: its end report, its arrival report and a stranding are refused.
  EndReport forged;
  forged.id = *id;
  forged.epoch = 1;
  forged.node = c.addr[2];
  forged.state = AgentState::finished;
  forged.result = Value::array({"forged"});
  auto finished = c[2].call(c.addr[0], "agent.finished", message_args(encode(forged)));
  REQUIRE_FALSE(finished.ok());
  CHECK(finished.error().code == Errc::not_permitted);
  CHECK(starts_with(finished.error().message, "not permitted: an end report of agent " + *id + " (epoch 1) from 127.0.0.1:"));
  CHECK(ends_with(finished.error().message, ": it does not hold the agent (no valid report token)"));
  ArrivalReport arrival;
  arrival.id = *id;
  arrival.epoch = 7;
  arrival.node = c.addr[2];
  arrival.token = std::string(32, '0');
  arrival.state = AgentState::running;
  auto arrived = c[2].call(c.addr[0], "agent.arrived", message_args(encode(arrival)));
  REQUIRE_FALSE(arrived.ok());
  CHECK(arrived.error().code == Errc::not_permitted);
  arrival.state = AgentState::stranded;
  auto stranded = c[2].call(c.addr[0], "agent.arrived", message_args(encode(arrival)));
  REQUIRE_FALSE(stranded.ok());
  CHECK(stranded.error().code == Errc::not_permitted);
  // Nor may it slip a message to the agent past its home.
  AgentDeliver deliver;
  deliver.id = *id;
  deliver.message = ForwardedMessage{std::string(32, 'f'), Value("forged")};
  auto delivered = c[2].call(c.addr[1], "agent.deliver", message_args(encode(deliver)));
  REQUIRE_FALSE(delivered.ok());
  CHECK_ERROR(delivered, Errc::not_permitted, "agent " + *id, "its home");

  auto status = c[0].agent_status(c.addr[0], *id);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::running);
  CHECK(status->location == c.addr[1]);
  REQUIRE(c[0].send_to_agent(c.addr[0], *id, Value("real")).ok());
  auto s = c[0].wait_agent(c.addr[0], *id, 10s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::finished);
  CHECK(s->result.get(1).as_string() == "real");
  CHECK(s->location == c.addr[1]);
}

TEST_CASE("agent.list and agent.status show a peer only the agents it launched; the node itself sees all") {
  auto home = start_node("home");
  auto client = start_node("client");
  AgentLaunch l;
  l.bundle = bundle_of("parker", kParker);
  auto mine = client->launch(home->advertised_address(), l);  // launched by an unauthenticated peer
  REQUIRE(mine.ok());
  auto local = home->launch(home->advertised_address(), l);  // launched by the node itself
  REQUIRE(local.ok());
  wait_parked(*home, *mine);
  wait_parked(*home, *local);

  auto all = home->list_agents();
  REQUIRE(all.ok());
  CHECK(all->size() == 2);
  auto seen = client->list_agents(home->advertised_address());
  REQUIRE(seen.ok());
  REQUIRE(seen->size() == 1);
  CHECK(seen->front().id == *mine);
  CHECK(client->agent_status(home->advertised_address(), *mine).ok());
  auto hidden = client->agent_status(home->advertised_address(), *local);
  REQUIRE_FALSE(hidden.ok());
  CHECK_ERROR(hidden, Errc::no_such_agent, *local);
  CHECK(home->agent_status(home->advertised_address(), *local).ok());
}

TEST_CASE("a bundle that fails its signature or the policy never enters the code cache") {
  auto alice = new_key();
  auto strict = start_node("strict", [&](NodeOptions& o) {
    o.policy = policy_from(R"({"keys": {"alice": ")" + alice->fingerprint() +
                           R"("}, "rules": [{"signer": "alice", "isolation": ["process"]}]})");
  });
  auto client = start_node("client");
  AgentLaunch l;
  l.bundle = bundle_of("parker", kParker);
  auto refused = client->launch(strict->advertised_address(), l);  // unsigned: the default rule refuses it
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::policy_refused);
  auto mallory = new_key();
  l.signing_key = mallory;  // signed, but by a key the policy does not know: the default rule again
  CHECK_FALSE(client->launch(strict->advertised_address(), l).ok());
  CHECK(strict->stats().bundles_cached == 0);
  // The node still asks for the bundle: it was never kept. A TRANSFER without it is answered
  // with a BundleWanted, and nothing is taken.
  AgentTransfer transfer;
  transfer.record.id = std::string(32, 'a');
  transfer.record.epoch = 1;
  transfer.record.home = client->advertised_address();
  transfer.record.owner = "anonymous";
  transfer.record.bundle_hash = bundle_hash(l.bundle);
  transfer.record.entry = "start";
  transfer.record.state = Value::table();
  transfer.record.max_hops = 10;
  transfer.to = destination_for(strict->node_id());
  transfer.nonce = random_nonce();
  transfer.expires_unix_ms = unix_ms_now() + 30'000;
  auto answer = client->call(strict->advertised_address(), "agent.transfer", transfer_call_args(transfer));
  INFO((answer.ok() ? std::string() : answer.error().message));
  REQUIRE(answer.ok());
  auto reply = decode_message<TransferReply, decode_transfer_reply>(*answer, "the TRANSFER's answer");
  REQUIRE(reply.ok());
  REQUIRE(reply->wanted.has_value());
  CHECK(reply->wanted->bundle_hash == bundle_hash(l.bundle));
  CHECK(strict->list_agents()->empty());
  // Signed by alice: admitted, and kept.
  l.signing_key = alice;
  REQUIRE(client->launch(strict->advertised_address(), l).ok());
  CHECK(strict->stats().bundles_cached == 1);
}

TEST_CASE("the code cache keeps at most its bound of bundles and bytes; published modules stay") {
  auto node = start_node("bounded", [](NodeOptions& o) { o.code_cache_max_entries = 2; });
  auto client = start_node("client");
  for (int i = 0; i < 5; ++i) {
    AgentLaunch l;
    l.bundle = bundle_of("agent" + std::to_string(i), "return {start = function() return " + std::to_string(i) + " end}");
    auto id = client->launch(node->advertised_address(), l);
    REQUIRE(id.ok());
    CHECK(node->stats().bundles_cached <= 2);
  }
  CHECK(node->stats().bundles_cached == 2);

  auto tiny = start_node("tiny", [](NodeOptions& o) { o.code_cache_max_bytes = 1; });
  REQUIRE(tiny->publish("lib", "return {answer = 42}").ok());
  AgentLaunch l;
  l.bundle = bundle_of("visitor", "return {start = function() return 1 end}");
  REQUIRE(client->launch(tiny->advertised_address(), l).ok());
  CHECK(tiny->stats().bundles_cached == 1);  // the published module alone
  auto fetched = client->fetch(tiny->advertised_address(), "lib");
  CHECK(fetched.ok());
}

TEST_CASE("code.require goes through the policy's grants like any service") {
  auto node = start_node("granting", [](NodeOptions& o) {
    o.policy = policy_from(R"({"rules": [{"isolation": ["process"], "services": ["kv.get"]}]})");
  });
  REQUIRE(node->publish("lib", "return {answer = 42}").ok());
  auto client = start_node("client");
  auto r = client->eval(node->advertised_address(), "return require_remote('lib').answer");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("service code.require is not granted to this code by the node's policy") != std::string::npos);
  auto granted = start_node("granted", [](NodeOptions& o) {
    o.policy = policy_from(R"({"rules": [{"isolation": ["process"], "services": ["code.require"]}]})");
  });
  REQUIRE(granted->publish("lib", "return {answer = 42}").ok());
  auto ok = client->eval(granted->advertised_address(), "return require_remote('lib').answer");
  REQUIRE(ok.ok());
  CHECK(ok->results.get(1).as_integer() == 42);
}

TEST_CASE("an agent step in the process jail is charged the CPU the host measured, not only what the guest counted") {
  // At an absurd rate any measured CPU time is worth more than the budget: the first step
  // spends it all, whatever the guest reports.
  test::Cluster c(2, [](int, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.instructions_per_cpu_ms = 1'000'000'000;
  });
  auto bundle = single_file_bundle("burner", test::kBurner, {"start", "hop"});
  REQUIRE(bundle.ok());
  bundle->manifest.cpu_budget = 150'000;  // two honest steps of ~60,000 fit
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {c.addr[1], c.addr[0]};
  auto id = c[0].launch(c.addr[0], l);
  REQUIRE(id.ok());
  auto s = c[0].wait_agent(c.addr[0], *id, 20s);
  REQUIRE(s.ok());
  CHECK(s->status == AgentState::failed);
  CHECK(s->reason == "agent " + *id + " ran out of its CPU budget of 150000 instructions (at " + c.addr[1] + ")");
}

namespace {

// The contents of /proc/PID/FILE.
std::string proc_file(const std::string& pid, const char* file) {
  std::ifstream in("/proc/" + pid + "/" + file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("the process jail's zygote, and so every guest forked from it, has an empty environment") {
  REQUIRE(::setenv("SOJOURN_HARDENING_SECRET", "must-not-reach-guests", 1) == 0);
  auto node = start_node("jailing", [](NodeOptions& o) { o.peer_isolation = Isolation::process; });
  auto client = start_node("client");
  auto r = client->eval(node->advertised_address(), "return 1");
  REQUIRE(r.ok());
  REQUIRE(r->isolation == Isolation::process);
  int zygotes = 0;
  const std::string self = std::to_string(::getpid());
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = proc_file(pid, "stat");
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    // Field 4 (after the name and the state) is the parent's pid.
    std::string rest = stat.substr(close + 2);
    rest = rest.substr(rest.find(' ') + 1);
    if (rest.substr(0, rest.find(' ')) != self) continue;
    if (proc_file(pid, "cmdline").find("--zygote") == std::string::npos) continue;
    ++zygotes;
    CHECK(proc_file(pid, "environ").empty());
  }
  CHECK(zygotes >= 1);
  ::unsetenv("SOJOURN_HARDENING_SECRET");
}
