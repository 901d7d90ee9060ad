// Where a node's connections may go and whom they must find there: an address with an
// expected identity refuses any other member of the CA (calls and agent hand-overs alike),
// agent.go reaches only the destinations the policy (or the node's default) allows, and
// code that sends an agent somewhere learns one fixed text, whatever the port did.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <thread>

#include "agents/destinations.hpp"
#include "tests/support/error_checks.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/bundle.hpp"
#include "tests/support/process.hpp"
#include "tests/transports/tls_support.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Pki;

namespace {

NodeOptions tls_options(const std::string& name, const std::string& dir) {
  NodeOptions o;
  o.name = name;
  o.tls.dir = dir;
  o.peer_isolation = Isolation::trusted;  // about where code may go, not the jail
  o.connect_timeout = 2000ms;
  o.request_timeout = 2000ms;
  o.retry_backoff = 5ms;
  o.migration_retries = 0;
  return o;
}

NodeOptions plain_options(const std::string& name) {
  NodeOptions o;
  o.name = name;
  o.peer_isolation = Isolation::trusted;
  o.connect_timeout = 500ms;
  o.request_timeout = 500ms;
  o.retry_backoff = 5ms;
  o.migration_retries = 0;
  return o;
}

struct Served {
  std::unique_ptr<Node> node;
  std::string address;
  explicit Served(NodeOptions o) : node(std::make_unique<Node>(std::move(o))) {
    auto bound = node->listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    address = *bound;
  }
};

// An agent that goes where its state says (no itinerary: the destination is the code's own
// choice) and returns where it ended.
constexpr const char* kGoer = R"(
function start(s) agent.go(s.to, "there") end
function there(s) return agent.here end
)";

AgentStatus send_agent(Node& from, const std::string& at, const std::string& to) {
  auto bundle = single_file_bundle("goer", kGoer, {"start", "there"});
  REQUIRE(bundle.ok());
  AgentLaunch launch;
  launch.bundle = *bundle;
  launch.owner = "tester";
  launch.state = Value::table();
  launch.state.set("to", to);
  auto id = from.launch(at, launch);
  REQUIRE(id.ok());
  auto status = from.wait_agent(at, *id, 15s);
  REQUIRE(status.ok());
  return *status;
}

std::string stranded_reason(const AgentStatus& s, const std::string& to) {
  CHECK(s.status == AgentState::stranded);
  const std::string prefix = "cannot move agent " + s.id + " to " + to + ": ";
  REQUIRE(s.reason.rfind(prefix, 0) == 0);
  return s.reason.substr(prefix.size());
}

// A loopback TCP socket: listening and never accepting (a peer that answers nothing), or
// bound and closed (a closed port).
struct RawPort {
  int fd = -1;
  std::uint16_t port = 0;
  explicit RawPort(bool listening) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // SAFETY: sockaddr_in is the sockaddr of AF_INET, of the size passed.
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    // SAFETY: as above.
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port = ntohs(a.sin_port);
    if (listening) {
      REQUIRE(::listen(fd, 4) == 0);
    } else {
      ::close(fd);
      fd = -1;
    }
  }
  ~RawPort() {
    if (fd >= 0) ::close(fd);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

std::shared_ptr<const Policy> policy_of(const std::string& json) {
  auto p = Policy::parse(json);
  REQUIRE(p.ok());
  return std::make_shared<const Policy>(std::move(*p));
}

}  // namespace

TEST_CASE("an address with an expected identity refuses another member of the CA, by name or by key") {
  Pki pki;
  pki.identity("b");
  Served c(tls_options("c", pki.identity("c")));
  const std::string c_key = pki.fingerprint("c");
  const std::string b_key = pki.fingerprint("b");

  // c answers at the address the client expects b at: c is a member of the CA, not b.
  NodeOptions o = tls_options("client", pki.identity("client"));
  o.tls.peers[c.address] = "b";
  Node client(o);
  auto r = client.call(c.address, "node.info");
  REQUIRE(!r.ok());
  CHECK_ERROR(r, Errc::untrusted_peer, c.address, "expected 'b', got 'c'", c_key);
  CHECK(c.node->stats().calls_served == 0);

  // By fingerprint, written as users write it.
  NodeOptions by_key = tls_options("client2", pki.identity("client2"));
  by_key.tls.peers[c.address] = "sha256:" + b_key;
  Node client2(by_key);
  auto k = client2.call(c.address, "node.info");
  REQUIRE(!k.ok());
  CHECK_ERROR(k, Errc::untrusted_peer, c.address, "expected '" + b_key + "', got 'c'", c_key);

  // The right identity, by name or by key, is served; other addresses are unaffected.
  NodeOptions right = tls_options("client3", pki.identity("client3"));
  right.tls.peers[c.address] = "c";
  right.tls.peers["127.0.0.1:1"] = "b";
  Node client3(right);
  CHECK(client3.call(c.address, "node.info").ok());
  NodeOptions right_key = tls_options("client4", pki.identity("client4"));
  right_key.tls.peers[c.address] = c_key;
  Node client4(right_key);
  CHECK(client4.call(c.address, "node.info").ok());
  CHECK(c.node->stats().calls_served == 2);
}

TEST_CASE("a bad expected identity is a TLS configuration error") {
  Pki pki;
  NodeOptions o = tls_options("a", pki.identity("a"));
  o.tls.peers["127.0.0.1:7400"] = "not a name!";
  Node a(o);
  auto r = a.listen("127.0.0.1:0");
  REQUIRE(!r.ok());
  CHECK_ERROR(r, Errc::tls_config, "not a name!=127.0.0.1:7400", "neither an identity name");
  NodeOptions bad_address = tls_options("a2", pki.identity("a2"));
  bad_address.tls.peers["nowhere"] = "b";
  Node a2(bad_address);
  CHECK_ERROR(a2.listen("127.0.0.1:0"), Errc::tls_config, "b=nowhere", "bad address 'nowhere'");
}

TEST_CASE("an agent's hand-over to an address whose node is expected is refused when another member serves it") {
  Pki pki;
  Served c(tls_options("c", pki.identity("c")));
  NodeOptions o = tls_options("a", pki.identity("a"));
  o.tls.peers[c.address] = "b";  // b should be there; c, a member of the same CA, is
  Served a(o);
  AgentStatus s = send_agent(*a.node, a.address, c.address);
  CHECK(stranded_reason(s, c.address) == "destination unreachable");
  CHECK(c.node->stats().agents_resident == 0);
  CHECK(c.node->stats().calls_served == 0);
}

TEST_CASE("a configured peer takes agents over TLS; an address the node does not know does not") {
  Pki pki;
  Served b(tls_options("b", pki.identity("b")));
  Served stranger(tls_options("stranger", pki.identity("stranger")));
  NodeOptions o = tls_options("a", pki.identity("a"));
  o.tls.peers[b.address] = "b";
  Served a(o);

  AgentStatus to_b = send_agent(*a.node, a.address, b.address);
  CHECK(to_b.status == AgentState::finished);
  CHECK(to_b.reason == "");
  CHECK(to_b.result.get(1).as_string() == b.address);

  // stranger is a member of the CA and listening, but a never learnt of it: the code's
  // choice alone does not make this node connect there.
  AgentStatus to_stranger = send_agent(*a.node, a.address, stranger.address);
  CHECK(stranded_reason(to_stranger, stranger.address) == "destination refused by policy");
  CHECK(stranger.node->stats().calls_served == 0);
  CHECK(stranger.node->stats().connections_refused == 0);  // not even a handshake
}

TEST_CASE("a policy's destinations decide where agents may go, with the same text for every refusal") {
  Pki pki;
  Served b(tls_options("b", pki.identity("b")));
  Served other(tls_options("other", pki.identity("other")));
  NodeOptions o = tls_options("a", pki.identity("a"));
  o.policy = policy_of(R"({"default": {"isolation": ["trusted"], "destinations": [")" + b.address + R"("]}})");
  Served a(o);
  CHECK(send_agent(*a.node, a.address, b.address).status == AgentState::finished);
  CHECK(stranded_reason(send_agent(*a.node, a.address, other.address), other.address) == "destination refused by policy");
  CHECK(stranded_reason(send_agent(*a.node, a.address, "10.9.8.7:7400"), "10.9.8.7:7400") == "destination refused by policy");
  CHECK(other.node->stats().calls_served == 0);
}

TEST_CASE("over TLS, a closed port, a silent port, a plain node and another CA's node all read 'destination unreachable'") {
  Pki pki;
  Pki foreign("foreign");
  Served plain(plain_options("plain"));
  Served alien(tls_options("alien", foreign.identity("alien")));
  RawPort closed(false), silent(true);
  NodeOptions o = tls_options("a", pki.identity("a"));
  o.request_timeout = 500ms;
  o.connect_timeout = 500ms;
  o.policy = policy_of(R"({"default": {"isolation": ["trusted"], "destinations": ["*"]}})");
  Served a(o);
  for (const std::string& to : {closed.address(), silent.address(), plain.address, alien.address}) {
    CAPTURE(to);
    CHECK(stranded_reason(send_agent(*a.node, a.address, to), to) == "destination unreachable");
  }
}

TEST_CASE("over plain TCP, agents go to loopback only, and every failure reads 'destination unreachable'") {
  Served b(plain_options("b"));
  Served a(plain_options("a"));
  RawPort closed(false), silent(true);
  CHECK(send_agent(*a.node, a.address, b.address).status == AgentState::finished);
  for (const std::string& to : {closed.address(), silent.address()}) {
    CAPTURE(to);
    AgentStatus s = send_agent(*a.node, a.address, to);
    CHECK(stranded_reason(s, to) == "destination unreachable");
    // What Lua code at the node reads back is the same text.
    auto seen = a.node->eval(a.address, "local id = ... return node.call('agent.status', id).reason", Value::array({s.id}));
    REQUIRE(seen.ok());
    CHECK(seen->results.get(1).as_string() == "cannot move agent " + s.id + " to " + to + ": destination unreachable");
  }
  // Not loopback, not known: no connection is even tried.
  CHECK(stranded_reason(send_agent(*a.node, a.address, "192.0.2.1:7400"), "192.0.2.1:7400") == "destination refused by policy");
}

TEST_CASE("check_destination: the default, over TLS and plain TCP, and a rule's patterns") {
  AgentRecord r;
  r.id = std::string(32, 'a');
  r.home = "127.0.0.1:7400";
  r.itinerary = {"10.0.0.2:7400"};
  r.hops.push_back(AgentHop{"10.0.0.3:7400", 0, 0, 0, 0, "process"});
  std::map<std::string, std::string> peers{{"10.0.0.4:7400", "d"}};
  DestinationScope tls{nullptr, true, &peers, &r};
  for (const char* known : {"127.0.0.1:7400", "10.0.0.2:7400", "10.0.0.3:7400", "10.0.0.4:7400"}) {
    CAPTURE(known);
    CHECK(check_destination(tls, known).ok());
  }
  auto no = check_destination(tls, "127.0.0.1:22");
  REQUIRE(!no.ok());
  CHECK_ERROR(no, Errc::policy_refused, "agent " + r.id, "127.0.0.1:22", "not a peer this node knows");
  DestinationScope plain{nullptr, false, &peers, &r};
  CHECK(check_destination(plain, "127.0.0.1:22").ok());
  CHECK(check_destination(plain, "[::1]:22").ok());
  CHECK(check_destination(plain, "localhost:22").ok());
  CHECK(check_destination(plain, "10.0.0.4:7400").ok());
  CHECK(!check_destination(plain, "10.0.0.9:7400").ok());
  CHECK(!check_destination(plain, "128.0.0.1:7400").ok());

  PolicyRule rule;
  rule.name = "ops";
  rule.destinations = std::vector<std::string>{"10.0.1.1:*", "peers"};
  DestinationScope ruled{&rule, true, &peers, &r};
  CHECK(check_destination(ruled, "10.0.1.1:9").ok());
  CHECK(check_destination(ruled, "10.0.0.4:7400").ok());
  auto home = check_destination(ruled, "127.0.0.1:7400");  // known, but the rule does not say "known"
  REQUIRE(!home.ok());
  CHECK_ERROR(home, Errc::policy_refused, "agent " + r.id, "127.0.0.1:7400", "policy rule ops");
  rule.destinations = std::vector<std::string>{"known"};
  CHECK(check_destination(ruled, "127.0.0.1:7400").ok());
  CHECK(!check_destination(ruled, "10.0.1.1:9").ok());
}

TEST_CASE("a policy's destinations are parsed and checked") {
  auto p = Policy::parse(R"({"rules": [{"signer": "*", "destinations": ["10.0.0.1:7400", "[::1]:*", "peers", "known", "*"]}]})");
  REQUIRE(p.ok());
  REQUIRE(p->rules()[0].destinations.has_value());
  CHECK(p->rules()[0].destinations->size() == 5);
  CHECK(!p->default_rule().destinations.has_value());
  auto bad = Policy::parse(R"({"default": {"destinations": ["10.0.0.1:7400", "everywhere"]}})");
  REQUIRE(!bad.ok());
  CHECK_ERROR(bad, Errc::bad_policy, "default.destinations[1]", "'everywhere'");
}

TEST_CASE("sojourn call --peer NAME=HOST:PORT refuses another member of the CA at that address") {
  Pki pki;
  Served c(tls_options("c", pki.identity("c")));
  const std::string client = pki.identity("client");
  auto wrong = test::run({SOJOURN_CLI_PATH, "call", "--tls", client, "--peer", "b=" + c.address, c.address, "node.info"});
  CHECK(wrong.exit_code == 3);
  CHECK(wrong.err == "sojourn: error: untrusted peer " + c.address +
                         " ('c'): not the identity expected at this address: expected 'b', got 'c' (key " + pki.fingerprint("c") +
                         ")\n");
  auto right = test::run({SOJOURN_CLI_PATH, "call", "--tls", client, "--peer", "c=" + c.address, c.address, "node.info"});
  CHECK(right.exit_code == 0);
  auto malformed = test::run({SOJOURN_CLI_PATH, "call", "--tls", client, "--peer", c.address, c.address, "node.info"});
  CHECK(malformed.exit_code == 2);
  CHECK(c.node->stats().calls_served == 1);
}
