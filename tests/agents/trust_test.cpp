// Trust between real nodes on loopback: signed code, the node policy (jails, quotas,
// services), quotas that travel with agents, and replayed TRANSFERs and signed REVs.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "agents/agent_messages.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/signature.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/raw_socket.hpp"
#include "tests/support/tcp_recorder.hpp"
#include "tests/support/trust_nodes.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

using test::new_key;
using test::policy_from;
using test::port_of;
using test::start_node;

std::string as_string(const std::vector<std::uint8_t>& bytes) { return {bytes.begin(), bytes.end()}; }

// The first frame in captured client bytes that `pick` selects.
std::optional<Frame> captured_frame(const std::vector<std::uint8_t>& bytes, const std::function<bool(const Frame&)>& pick) {
  FrameDecoder decoder;
  (void)decoder.feed(bytes);
  for (auto& f : decoder.frames()) {
    if (pick(f)) return f;
  }
  return std::nullopt;
}

// Sends a captured frame again, as is, on a new connection; returns the node's reply.
Reply replay(std::uint16_t port, const Frame& frame) {
  return test::exchange_frame(port, frame.header.kind, frame.header.request_id, frame.payload);
}


}  // namespace

TEST_CASE("a policy file is checked field by field, and its rules match signers and peers in order") {
  auto alice = new_key();
  const std::string json = R"({
    "keys": {"alice": ")" + alice->fingerprint() + R"("},
    "rules": [
      {"name": "alice", "signer": "alice", "isolation": ["trusted", "process"], "services": ["kv.*"]},
      {"name": "cluster", "peer": "node-b", "isolation": "process"},
      {"name": "signed", "signer": "*", "quotas": {"cpu_per_run": 1000, "max_hops": 3}}
    ],
    "default": {"isolation": ["microvm", "process"], "quotas": {"cpu_per_run": 10}, "services": []}
  })";
  auto p = policy_from(json);
  CHECK(p->match(alice->fingerprint(), "").name == "alice");
  CHECK(p->match(alice->fingerprint(), "").grants("kv.put"));
  CHECK_FALSE(p->match(alice->fingerprint(), "").grants("node.info"));
  CHECK(p->match("", "node-b").name == "cluster");
  CHECK(p->match("", "node-c").name == "default");
  CHECK(p->match(std::string(64, 'f'), "").name == "signed");
  CHECK(p->match(std::string(64, 'f'), "").quotas.max_hops == 3);
  CHECK(p->match("", "").name == "default");
  CHECK_FALSE(p->match("", "").grants("kv.get"));
  CHECK(p->signer_name(alice->fingerprint()) == "alice");

  struct Bad {
    const char* json;
    const char* message;
  };
  const Bad bad[] = {
      {R"({"rules": [{"signer": "bob"}]})", "bad policy: rules[0].signer: unknown key 'bob' (name it under \"keys\", or give its fingerprint)"},
      {R"({"rules": [{"isolation": ["vm"]}]})", "bad policy: rules[0].isolation: unknown level 'vm' (expected trusted, process or microvm)"},
      {R"({"default": {"quotas": {"cpu": 5}}})", "bad policy: default.quotas: unknown field 'cpu'"},
      {R"({"default": {"signer": "*"}})", "bad policy: default: unknown field 'signer'"},
      {R"({"rules": [{"quotas": {"wall_ms": -1}}]})", "bad policy: rules[0].quotas.wall_ms: must be a whole number, 0 or more"},
      {R"({"keys": {"carol": "carol.crt"}})", "bad policy: keys.carol: cannot read ./carol.crt"},
      {R"({"rule": []})", "bad policy: the policy: unknown field 'rule'"},
  };
  for (const auto& b : bad) {
    auto r = Policy::parse(b.json);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::bad_policy);
    CHECK(r.error().message == b.message);
  }
  // Without a default, whatever no rule names is refused.
  auto strict = Policy::parse(R"({"rules": []})");
  REQUIRE(strict.ok());
  CHECK(strict->match("", "").refuse);
}

TEST_CASE("the sample policy file parses") {
  auto p = Policy::load(SOJOURN_SAMPLES_DIR "/policy.json");
  if (!p) FAIL(p.error().message);
  CHECK_FALSE(p->rules().empty());
}

TEST_CASE("the policy picks the jail, the quotas and the services of remote evaluations by their signer") {
  auto alice = new_key();
  auto mallory = new_key();
  auto server = start_node("server", [&](NodeOptions& o) {
    o.policy = policy_from(R"({
      "keys": {"alice": ")" + alice->fingerprint() + R"("},
      "rules": [{"name": "alice", "signer": "alice", "isolation": ["trusted"], "services": ["kv.get", "kv.put"]}],
      "default": {"isolation": ["microvm", "process"], "quotas": {"cpu_per_run": 100000}, "services": ["kv.get"]}
    })");
  });
  auto client = start_node("client");
  const std::string at = server->advertised_address();

  EvalOptions signed_by_alice;
  signed_by_alice.signing_key = alice;
  auto trusted = client->eval(at, "node.call('kv.put', 'k', 7) return node.call('kv.get', 'k')", Value::table(), signed_by_alice);
  REQUIRE(trusted.ok());
  CHECK(trusted->isolation == Isolation::trusted);  // the node's peer level is process: the policy trusts alice
  CHECK(trusted->results.get(1).as_integer() == 7);

  // Unsigned code: the default rule's strictest available jail and its small CPU quota,
  // whatever the request asks for.
  EvalOptions big;
  big.limits.cpu_instructions = 1'000'000'000;
  auto loop = client->eval(at, "while true do end", Value::table(), big);
  REQUIRE_FALSE(loop.ok());
  CHECK_ERROR(loop, Errc::cpu_limit, "100000 instructions");
  auto jailed = client->eval(at, "return node.call('kv.get', 'k')");
  REQUIRE(jailed.ok());
  // The default rule's first level this node has: microvm where KVM runs the guest.
  const auto levels = server->isolation_levels();
  const Isolation strictest = levels.available.back();
  CHECK(jailed->isolation == strictest);
  CHECK(jailed->results.get(1).as_integer() == 7);

  // A service the rule does not grant is refused inside Lua, where pcall sees the reason.
  auto put = client->eval(at, "return node.call('kv.put', 'k', 8)");
  REQUIRE_FALSE(put.ok());
  CHECK_ERROR(put, Errc::lua_error, "kv.put", "not granted");
  auto caught = client->eval(at, "local ok, e = pcall(node.call, 'node.info') return ok, e");
  REQUIRE(caught.ok());
  CHECK_FALSE(caught->results.get(1).as_bool());
  CHECK(caught->results.get(2).as_string() == "service node.info is not granted to this code by the node's policy");
  CHECK(server->call_local("kv.get", Value::array({"k"}))->as_integer() == 7);

  // An unknown signer is unknown code: the default rule.
  EvalOptions by_mallory;
  by_mallory.signing_key = mallory;
  auto unknown = client->eval(at, "return 1", Value::table(), by_mallory);
  REQUIRE(unknown.ok());
  CHECK(unknown->isolation == strictest);
}

TEST_CASE("a strict policy refuses unsigned code, and a node without a policy still refuses a bad signature") {
  auto alice = new_key();
  auto strict = start_node("strict", [&](NodeOptions& o) {
    o.policy = policy_from(R"({"keys": {"alice": ")" + alice->fingerprint() +
                           R"("}, "rules": [{"signer": "alice", "isolation": ["process"]}]})");
  });
  auto client = start_node("client");
  auto refused = client->eval(strict->advertised_address(), "return 1");
  REQUIRE_FALSE(refused.ok());
  CHECK_ERROR(refused, Errc::policy_refused, "rule default", "unsigned code");
  EvalOptions signed_by_alice;
  signed_by_alice.signing_key = alice;
  CHECK(client->eval(strict->advertised_address(), "return 1", Value::table(), signed_by_alice).ok());

  // A signed request changed on the way (here: its chunk) is refused, policy or not.
  auto open = start_node("open");
  EvalRequest request;
  request.source = "return 1";
  sign_eval(request, *alice, 30s);
  request.source = "return 2";
  test::RawSocket socket(port_of(open->advertised_address()));
  REQUIRE(socket.send(encode_frame(FrameKind::eval, 1, encode(request))));
  FrameDecoder decoder;
  for (int i = 0; i < 200 && decoder.frames().empty(); ++i) REQUIRE(decoder.feed(socket.read_until_closed(20)).ok());
  REQUIRE(decoder.frames().size() == 1);
  auto reply = decode_reply(decoder.frames()[0].payload);
  REQUIRE(reply.ok());
  CHECK_ERROR(*reply, Errc::bad_signature, "does not verify", alice->fingerprint().substr(0, 16));
}

TEST_CASE("a launch whose bundle or manifest quotas changed after signing is refused") {
  auto owner = new_key();
  auto node = start_node("home");
  auto client = start_node("client");
  auto bundle = single_file_bundle("burner", sojourn::test::kBurner, {"start", "hop"});
  REQUIRE(bundle.ok());
  bundle->manifest.cpu_budget = 150'000;
  BundleSignature s = sign_bundle(*owner, *bundle);

  auto launch_with = [&](const Bundle& b) {
    AgentLaunchRequest request;
    request.bundle_bytes = as_string(encode_bundle(b));
    request.entry = "start";
    request.signer = s.public_key;
    request.signature = s.signature;
    return client->call(node->advertised_address(), "agent.launch", message_args(encode(request)));
  };
  CHECK(launch_with(*bundle).ok());
  Bundle code = *bundle;
  code.files.begin()->second[20] ^= 1;  // one byte
  auto r1 = launch_with(code);
  REQUIRE_FALSE(r1.ok());
  CHECK_ERROR(r1, Errc::bad_signature, "bundle " + bundle_hash(code).substr(0, 12), "(burner)",
              owner->fingerprint().substr(0, 16));
  Bundle quotas = *bundle;
  quotas.manifest.cpu_budget = 1'000'000'000;
  auto r2 = launch_with(quotas);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.error().code == Errc::bad_signature);
}

TEST_CASE("an agent out of its signed CPU budget ends at the hop where it ran out, and its home hears why") {
  auto owner = new_key();
  auto a = start_node("a");
  auto b = start_node("b");
  auto c = start_node("c");
  auto bundle = single_file_bundle("burner", sojourn::test::kBurner, {"start", "hop"});
  REQUIRE(bundle.ok());
  // ~60,000 instructions a step: two steps fit, the third does not.
  bundle->manifest.cpu_budget = 150'000;
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {b->advertised_address(), c->advertised_address(), b->advertised_address()};
  l.signing_key = owner;
  auto id = a->launch(a->advertised_address(), l);
  REQUIRE(id.ok());
  auto status = a->wait_agent(a->advertised_address(), *id, 20s);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::failed);
  CHECK(status->reason == "agent " + *id + " ran out of its CPU budget of 150000 instructions (at " +
                              c->advertised_address() + ")");
  CHECK(status->hops.size() == 3);
}

TEST_CASE("a policy's per-visit CPU quota ends an agent that stays too long at one node") {
  auto a = start_node("a");
  auto b = start_node("b", [](NodeOptions& o) {
    o.policy = policy_from(R"({"default": {"name": "visitors", "isolation": ["trusted", "process"],
                                           "quotas": {"cpu_per_hop": 5000}}})");
  });
  auto bundle = single_file_bundle("burner", sojourn::test::kBurner, {"start", "hop"});
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {b->advertised_address()};
  auto id = a->launch(a->advertised_address(), l);
  REQUIRE(id.ok());
  auto status = a->wait_agent(a->advertised_address(), *id, 20s);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::failed);
  CHECK(status->reason == "agent " + *id + " ran out of its CPU budget of 5000 instructions for one visit at " +
                              b->advertised_address() + " (policy rule visitors)");
}

TEST_CASE("a node cannot raise an agent's quotas above what its owner signed") {
  auto owner = new_key();
  auto b = start_node("b", [](NodeOptions& o) {
    // This node's policy would allow far more than the owner signed: the signed figure wins.
    o.policy = policy_from(R"({"default": {"isolation": ["trusted", "process"], "quotas": {"cpu_per_run": 1000000000}}})");
  });
  auto sender = start_node("sender");
  auto bundle = single_file_bundle("spin", "function start(s) while true do end end", {"start"});
  REQUIRE(bundle.ok());
  bundle->manifest.quotas.cpu_instructions = 50'000;
  bundle->manifest.cpu_budget = 150'000;
  BundleSignature s = sign_bundle(*owner, *bundle);
  auto bytes = encode_bundle(*bundle);

  AgentRecord record;
  record.id = std::string(32, 'b');
  record.home = sender->advertised_address();
  record.owner = "t";
  record.bundle_hash = sha256_hex(bytes);
  record.entry = "start";
  record.state = Value::table();
  record.epoch = 1;
  record.max_hops = 4;
  record.signer = s.public_key;
  record.signature = s.signature;
  record.cpu_left = 999'999'999;  // raised by the sending node
  auto transfer_of = [&](const AgentRecord& r) {
    AgentTransfer t;
    t.record = r;
    t.bundle_bytes = as_string(bytes);
    t.to = b->node_id();
    t.nonce = random_nonce();
    t.expires_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch() + 30s).count();
    return transfer_call_args(t);
  };
  auto raised = sender->call(b->advertised_address(), "agent.transfer", transfer_of(record));
  REQUIRE_FALSE(raised.ok());
  CHECK_ERROR(raised, Errc::quota_raised, "agent " + std::string(32, 'b'), "CPU budget", "999999999", "150000");
  record.cpu_left = 150'000;
  record.quotas.cpu_instructions = 1'000'000'000;
  auto per_run = sender->call(b->advertised_address(), "agent.transfer", transfer_of(record));
  REQUIRE_FALSE(per_run.ok());
  CHECK_ERROR(per_run, Errc::quota_raised, "agent " + std::string(32, 'b'), "quota per run", "1000000000", "50000");

  // Lowered is fine.
  record.cpu_left = 120'000;
  record.quotas = Limits{};
  CHECK(sender->call(b->advertised_address(), "agent.transfer", transfer_of(record)).ok());

  // Each step gets min(signed, policy, left): the signed 50,000 instructions, not the
  // policy's billion.
  AgentLaunch l;
  l.bundle = *bundle;
  l.signing_key = owner;
  auto id = sender->launch(b->advertised_address(), l);
  REQUIRE(id.ok());
  auto status = sender->wait_agent(b->advertised_address(), *id, 10s);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::failed);
  CHECK(status->reason == "CPU limit of 50000 instructions exceeded");
}

TEST_CASE("a node cannot change the mobility an agent's owner signed") {
  auto owner = new_key();
  auto b = start_node("b", [](NodeOptions& o) { o.peer_isolation = Isolation::process; });
  auto sender = start_node("sender");
  auto transfer_of = [&](const Bundle& bundle, Mobility mobility, bool signed_by_owner) {
    const auto bytes = encode_bundle(bundle);
    AgentRecord record;
    record.id = std::string(32, 'c');
    record.home = sender->advertised_address();
    record.owner = "t";
    record.bundle_hash = sha256_hex(bytes);
    record.entry = "start";
    record.state = Value::table();
    record.epoch = 1;
    record.max_hops = 4;
    record.mobility = mobility;
    if (signed_by_owner) {
      BundleSignature sig = sign_bundle(*owner, bundle);
      record.signer = sig.public_key;
      record.signature = sig.signature;
    }
    AgentTransfer t;
    t.record = record;
    t.bundle_bytes = as_string(bytes);
    t.to = b->node_id();
    t.nonce = random_nonce();
    t.expires_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch() + 30s).count();
    return transfer_call_args(t);
  };
  auto weak = single_file_bundle("walker", "function start(s) return 1 end", {"start"});
  REQUIRE(weak.ok());
  Bundle strong = *weak;
  strong.manifest.mobility = "strong";
  // Signed weak, arriving as a strong agent: refused before any image is looked at.
  auto raised = sender->call(b->advertised_address(), "agent.transfer", transfer_of(*weak, Mobility::strong, true));
  CHECK_ERROR(raised, Errc::quota_raised, "agent " + std::string(32, 'c'),
              "claims strong mobility, not the weak mobility its owner signed");
  // A strong manifest, arriving as a weak agent (signed or not): refused.
  auto lowered = sender->call(b->advertised_address(), "agent.transfer", transfer_of(strong, Mobility::weak, true));
  CHECK_ERROR(lowered, Errc::quota_raised, "claims weak mobility, not the strong mobility its owner signed");
  auto unsigned_lowered = sender->call(b->advertised_address(), "agent.transfer", transfer_of(strong, Mobility::weak, false));
  CHECK_ERROR(unsigned_lowered, Errc::quota_raised, "claims weak mobility, not the strong mobility its manifest sets");
  // What the owner signed is accepted (a weak agent of a weak bundle).
  CHECK(sender->call(b->advertised_address(), "agent.transfer", transfer_of(*weak, Mobility::weak, true)).ok());
}

TEST_CASE("a captured TRANSFER replayed later, or at another node, is refused and runs nothing twice") {
  auto home = start_node("home", [](NodeOptions& o) { o.transfer_lifetime = 400ms; });
  test::TcpRecorder wire;  // the path to b, where an attacker listens
  NodeOptions bo;
  bo.name = "b";
  bo.advertise = "127.0.0.1:" + std::to_string(wire.port());
  std::atomic<std::int64_t> b_ahead_ms{0};  // b's expiry clock runs ahead by this: "later" without waiting
  bo.expiry_clock = [&b_ahead_ms] { return test::unix_now_ms() + b_ahead_ms.load(); };
  Node b(bo);
  auto bound = b.listen("127.0.0.1:0");
  REQUIRE(bound.ok());
  wire.forward_to(port_of(*bound));
  auto other = start_node("other");

  auto bundle = single_file_bundle("counter", R"(
function start(s) agent.go(agent.itinerary[1], "visit") end
function visit(s)
  node.call("kv.put", "visits", (node.call("kv.get", "visits") or 0) + 1)
  return "done"
end)", {"start", "visit"});
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {bo.advertise};
  auto id = home->launch(home->advertised_address(), l);
  REQUIRE(id.ok());
  auto status = home->wait_agent(home->advertised_address(), *id, 10s);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::finished);
  CHECK(b.call_local("kv.get", Value::array({"visits"}))->as_integer() == 1);

  auto transfer = captured_frame(wire.client_bytes(), [](const Frame& f) {
    if (f.header.kind != FrameKind::call) return false;
    auto call = decode_call(f.payload);
    return call.ok() && call->service == "agent.transfer";
  });
  REQUIRE(transfer.has_value());
  const std::string what = "the TRANSFER of agent " + *id + " (epoch 1)";
  // At once, at b: what the hand-over's own retry gets, the same COMMIT; no second agent.
  Reply again = replay(port_of(*bound), *transfer);
  CHECK(again.code == Errc::ok);
  auto commit = decode_message<AgentCommit, decode_commit>(again.result, "the COMMIT");
  REQUIRE(commit.ok());
  CHECK(commit->id == *id);
  // At another node: it is not addressed there.
  Reply elsewhere = replay(port_of(other->advertised_address()), *transfer);
  CHECK(elsewhere.code == Errc::replayed);
  // Addressed to b's id (b was reached through the recorder's relay, by another address).
  CHECK(elsewhere.message == "replayed: " + what + " is addressed to node " + b.node_id() + ", not to this node (" +
                                 other->node_id() + ")");
  CHECK(other->stats().agents_resident == 0);
  // Later, anywhere: expired.
  b_ahead_ms = 1000;  // past the TRANSFER's 400 ms lifetime
  Reply later = replay(port_of(*bound), *transfer);
  CHECK(later.code == Errc::expired);
  CHECK(later.message.rfind("expired: " + what + " expired ", 0) == 0);
  CHECK(b.call_local("kv.get", Value::array({"visits"}))->as_integer() == 1);
  CHECK(b.stats().agents_resident == 0);
}

TEST_CASE("a captured signed REV replayed is refused: at once as a replay, later as expired") {
  test::TcpRecorder wire;  // on the path to the server: the address clients dial and sign for
  const std::string via = "127.0.0.1:" + std::to_string(wire.port());
  NodeOptions so;
  so.name = "server";
  so.max_message_lifetime = 5s;
  so.advertise = via;
  std::atomic<std::int64_t> server_ahead_ms{0};  // the server's expiry clock runs ahead by this
  so.expiry_clock = [&server_ahead_ms] { return test::unix_now_ms() + server_ahead_ms.load(); };
  Node server(so);
  auto bound = server.listen("127.0.0.1:0");
  REQUIRE(bound.ok());
  wire.forward_to(port_of(*bound));
  auto client = start_node("client");
  auto author = new_key();
  EvalOptions signed_eval;
  signed_eval.signing_key = author;
  signed_eval.signature_lifetime = 400ms;
  const char* count = "node.call('kv.put', 'runs', (node.call('kv.get', 'runs') or 0) + 1) return 'ran'";
  auto first = client->eval(via, count, Value::table(), signed_eval);
  REQUIRE(first.ok());
  auto eval = captured_frame(wire.client_bytes(), [](const Frame& f) { return f.header.kind == FrameKind::eval; });
  REQUIRE(eval.has_value());
  auto request = decode_eval(eval->payload);
  REQUIRE(request.ok());

  Reply again = replay(port_of(*bound), *eval);
  CHECK(again.code == Errc::replayed);
  CHECK(again.message == "replayed: remote evaluation with nonce " + request->nonce.substr(0, 16) + " was accepted before");
  server_ahead_ms = 1000;  // past the signature's 400 ms lifetime
  Reply later = replay(port_of(*bound), *eval);
  CHECK(later.code == Errc::expired);
  CHECK(later.message.rfind("expired: remote evaluation expired ", 0) == 0);
  CHECK(server.call_local("kv.get", Value::array({"runs"}))->as_integer() == 1);

  // An expiry further ahead than the node remembers nonces is refused too.
  signed_eval.signature_lifetime = 1h;
  auto far = client->eval(via, "return 1", Value::table(), signed_eval);
  REQUIRE_FALSE(far.ok());
  CHECK(far.error().code == Errc::expired);
  CHECK(far.error().message.find("more than this node's limit of 5000 ms") != std::string::npos);
}
