// Over TLS a node's id is its key fingerprint, the one its handshake proves: a node that
// claims another's id is not handed an agent, nor sent an evaluation signed for that id.
#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <thread>

#include "agents/agent_messages.hpp"
#include "sojourn/agents/node.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/trust_nodes.hpp"
#include "tests/transports/tls_support.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Pki;

namespace {

std::unique_ptr<Node> tls_node(const std::string& name, const std::string& dir,
                               std::function<void(NodeOptions&)> tweak = {}) {
  NodeOptions o;
  o.name = name;
  o.tls.dir = dir;
  o.peer_isolation = Isolation::trusted;  // about identities, not the jail
  o.connect_timeout = 2000ms;
  o.request_timeout = 2000ms;
  o.retry_backoff = 5ms;
  o.migration_retries = 0;
  if (tweak) tweak(o);
  auto node = std::make_unique<Node>(o);
  REQUIRE(node->listen("127.0.0.1:0").ok());
  return node;
}

}  // namespace

TEST_CASE("over TLS the node id is the key fingerprint, and node.info says so") {
  Pki pki;
  auto b = tls_node("b", pki.identity("b"));
  CHECK(b->node_id() == pki.fingerprint("b"));
  auto client = tls_node("client", pki.identity("client"));
  auto info = client->call(b->advertised_address(), "node.info");
  REQUIRE(info.ok());
  CHECK(info->get("id").as_string() == pki.fingerprint("b"));
}

TEST_CASE("a member of the CA that names another node's id is not handed the agent") {
  Pki pki;
  auto b = tls_node("b", pki.identity("b"));
  auto c = tls_node("c", pki.identity("c"));
  const std::string b_id = b->node_id();
  // c claims to be b when asked its id (as a TRANSFER's source does before addressing it), and
  // counts the TRANSFERs that reach it.
  auto transfers = std::make_shared<std::atomic<int>>(0);
  c->register_service("node.info", [b_id](const Value&) -> Result<Value> {
    Value info = Value::table();
    info.set(Value("id"), Value(b_id));
    return info;
  });
  c->register_service("agent.transfer", [transfers](const Value&) -> Result<Value> {
    ++*transfers;
    return errors::invalid_argument("c takes no agents");
  });
  const std::string c_address = c->advertised_address();
  auto a = tls_node("a", pki.identity("a"), [&](NodeOptions& o) { o.tls.peers[c_address] = "c"; });
  auto bundle = single_file_bundle("go", "function start(s) agent.go(agent.itinerary[1], 'there') end\n"
                                         "function there(s) return 1 end");
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {c_address};
  auto id = a->launch(a->advertised_address(), l);
  REQUIRE(id.ok());
  AgentStatus status;
  for (int i = 0; i < 200; ++i) {
    auto s = a->agent_status(a->advertised_address(), *id);
    REQUIRE(s.ok());
    status = *s;
    if (status.status == AgentState::stranded || status.done()) break;
    std::this_thread::sleep_for(20ms);
  }
  CHECK(status.status == AgentState::stranded);  // it stays with a
  CHECK(transfers->load() == 0);                 // and its bytes never went to c
}

TEST_CASE("an evaluation signed for a node's id is not sent to a member of the CA that claims that id") {
  Pki pki;
  auto b = tls_node("b", pki.identity("b"));
  auto c = tls_node("c", pki.identity("c"));
  c->register_service("node.info", [id = b->node_id()](const Value&) -> Result<Value> {
    Value info = Value::table();
    info.set(Value("id"), Value(id));
    return info;
  });
  auto client = tls_node("client", pki.identity("client"));
  EvalOptions eo;
  eo.signing_key = test::new_key();
  auto r = client->eval(c->advertised_address(), "return 1", Value::table(), eo);
  CHECK_ERROR(r, Errc::untrusted_peer, "node id", pki.fingerprint("c").substr(0, 16));
  CHECK(c->stats().evals_served == 0);
  // The honest node is evaluated for as usual.
  auto ok = client->eval(b->advertised_address(), "return 2", Value::table(), eo);
  REQUIRE(ok.ok());
  CHECK(ok->results.get(1).as_integer() == 2);
}
