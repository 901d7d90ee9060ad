// Mutual TLS between nodes: good peers call, evaluate and hand agents over; a peer without
// a certificate, with one from another CA, an expired one or an unpinned key is refused
// with the reason on both ends, nothing it sent runs, and the node keeps serving.
#include <doctest/doctest.h>

#include "sojourn/transports/asio.hpp"  // <utility> before Asio, see there
#include "tests/support/error_checks.hpp"

#include <array>
#include <atomic>
#include <future>
#include <mutex>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>

#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/identity.hpp"
#include "sojourn/core/json.hpp"
#include "sojourn/transports/address.hpp"
#include "sojourn/transports/link.hpp"
#include "tests/support/raw_socket.hpp"
#include "tests/transports/tls_support.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::Pki;

namespace {

NodeOptions options_for(const std::string& name, const std::string& tls_dir, std::vector<std::string> pins = {}) {
  NodeOptions o;
  o.name = name;
  o.tls.dir = tls_dir;
  o.tls.pins = std::move(pins);
  o.peer_isolation = Isolation::trusted;  // these tests are about who gets in, not the jail
  o.connect_timeout = 3000ms;
  o.request_timeout = 5000ms;
  o.retry_backoff = 10ms;
  return o;
}

// A node serving TLS on loopback, with a service that answers who called it.
struct Server {
  std::unique_ptr<Node> node;
  std::string address;
  explicit Server(NodeOptions o) : node(std::make_unique<Node>(std::move(o))) {
    node->register_service("whoami", PeerService([](const Value&, const PeerIdentity& caller) -> Result<Value> {
      Value v = Value::table();
      v.set("name", caller.name);
      v.set("fingerprint", caller.fingerprint);
      v.set("address", caller.address);
      return v;
    }));
    auto bound = node->listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    address = *bound;
  }
};

// Nothing the refused peer sent ran, and a good peer is still served.
void check_refused_and_still_serving(Server& server, std::uint64_t refused_before, const std::string& good_dir) {
  NodeStats s = server.node->stats();
  CHECK(s.calls_served == 0);
  CHECK(s.evals_served == 0);
  // The server counts the refusal once its handshake has failed: it may lag the client's error.
  for (int i = 0; i < 200 && server.node->stats().connections_refused == refused_before; ++i) std::this_thread::sleep_for(5ms);
  CHECK(server.node->stats().connections_refused == refused_before + 1);
  Node good(options_for("good", good_dir));
  auto r = good.eval(server.address, "return 6 * 7");
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_integer() == 42);
  CHECK(server.node->stats().evals_served == 1);
}

// A TLS 1.3 client that has no certificate: sends an eval frame and reports what it read.
std::string client_without_certificate(const std::string& address) {
  namespace ssl = boost::asio::ssl;
  using boost::asio::ip::tcp;
  boost::asio::io_context io;
  ssl::context ctx(ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_3_VERSION);
  ctx.set_verify_mode(ssl::verify_none);
  ssl::stream<tcp::socket> stream(io, ctx);
  auto a = parse_address(address);
  REQUIRE(a.ok());
  boost::system::error_code ec;
  stream.next_layer().connect(tcp::endpoint(boost::asio::ip::make_address(a->host), a->port), ec);
  REQUIRE(!ec);
  stream.handshake(ssl::stream_base::client, ec);
  if (ec) return "handshake: " + ec.message();
  EvalRequest request;
  request.source = "return 1";
  auto bytes = encode_frame(FrameKind::eval, 1, encode(request));
  boost::asio::write(stream, boost::asio::buffer(bytes), ec);
  std::array<std::uint8_t, 256> reply{};
  stream.read_some(boost::asio::buffer(reply), ec);
  return ec ? ec.message() : "a reply";
}

}  // namespace

TEST_CASE("a client-server call and a remote evaluation over mutual TLS; the service sees the caller's identity") {
  Pki pki;
  Server server(options_for("srv", pki.identity("srv")));
  Node client(options_for("cli", pki.identity("cli")));
  auto who = client.call(server.address, "whoami");
  REQUIRE(who.ok());
  CHECK(who->get("name").as_string() == "cli");
  CHECK(who->get("fingerprint").as_string() == pki.fingerprint("cli"));
  CHECK(who->get("address").as_string().rfind("127.0.0.1:", 0) == 0);
  auto r = client.eval(server.address, "local a, b = ...; return a * b", Value::array({6, 7}));
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_integer() == 42);
  CHECK(server.node->stats().calls_served == 1);
  CHECK(server.node->stats().evals_served == 1);
  CHECK(server.node->stats().connections_refused == 0);
}

TEST_CASE("a peer without a certificate is refused: certificate required, nothing runs, the node keeps serving") {
  Pki pki;
  Server server(options_for("srv", pki.identity("srv")));
  std::string answer = client_without_certificate(server.address);
  CHECK(answer.find("certificate required") != std::string::npos);
  check_refused_and_still_serving(server, 0, pki.identity("good"));
}

TEST_CASE("a peer with a certificate from another CA is refused, and a server from another CA too") {
  Pki pki;
  Pki other("other-ca");
  Server server(options_for("srv", pki.identity("srv")));
  // The stranger knows our CA's certificate (it is public), but its own is from another CA.
  std::string stranger_dir = other.identity("stranger");
  std::filesystem::copy_file(pki.ca_dir + "/ca.crt", stranger_dir + "/ca.crt", std::filesystem::copy_options::overwrite_existing);
  Node stranger(options_for("stranger", stranger_dir));
  auto r = stranger.eval(server.address, "return 1");
  REQUIRE(!r.ok());
  CHECK_ERROR(r, Errc::refused_by_peer, server.address, "unknown CA");
  check_refused_and_still_serving(server, 0, pki.identity("good"));

  // The other way round: our client does not trust a server of another CA.
  Server foreign(options_for("foreign", other.identity("foreign")));
  Node client(options_for("cli", pki.identity("cli")));
  auto f = client.call(foreign.address, "kv.keys");
  REQUIRE(!f.ok());
  CHECK_ERROR(f, Errc::untrusted_peer, foreign.address, "'foreign'", "another CA");
  CHECK(foreign.node->stats().calls_served == 0);
}

TEST_CASE("an expired certificate is refused on either side") {
  Pki pki;
  Validity past{-std::chrono::hours(48), -std::chrono::hours(24)};
  Server server(options_for("srv", pki.identity("srv")));
  Node old_client(options_for("old", pki.identity("old", past)));
  auto r = old_client.call(server.address, "kv.keys");
  REQUIRE(!r.ok());
  CHECK_ERROR(r, Errc::refused_by_peer, server.address, "certificate expired");
  check_refused_and_still_serving(server, 0, pki.identity("good"));

  Server old_server(options_for("old-srv", pki.identity("old-srv", past)));
  Node client(options_for("cli", pki.identity("cli")));
  auto s = client.call(old_server.address, "kv.keys");
  REQUIRE(!s.ok());
  CHECK_ERROR(s, Errc::untrusted_peer, old_server.address, "'old-srv'", "certificate expired");
}

TEST_CASE("pinned keys: two self-signed nodes that pin each other talk; a wrong key is refused with both fingerprints") {
  Pki pki;
  std::string a_dir = pki.self_signed("a"), b_dir = pki.self_signed("b"), c_dir = pki.self_signed("c");
  std::string a_fp = pki.fingerprint("a"), b_fp = pki.fingerprint("b"), c_fp = pki.fingerprint("c");
  Server a(options_for("a", a_dir, {b_fp}));
  Node b(options_for("b", b_dir, {a_fp}));
  auto who = b.call(a.address, "whoami");
  REQUIRE(who.ok());
  CHECK(who->get("name").as_string() == "b");
  CHECK(who->get("fingerprint").as_string() == b_fp);

  // c pins a, but a pins only b.
  Node c(options_for("c", c_dir, {a_fp}));
  auto refused = c.eval(a.address, "return 1");
  REQUIRE(!refused.ok());
  CHECK_ERROR(refused, Errc::refused_by_peer, a.address, "bad certificate");
  CHECK(a.node->stats().evals_served == 0);

  // b pins c's key while it talks to a: the server's key is not the one expected.
  Node b_wrong(options_for("b", b_dir, {c_fp}));
  auto mismatch = b_wrong.call(a.address, "kv.keys");
  REQUIRE(!mismatch.ok());
  CHECK_ERROR(mismatch, Errc::untrusted_peer, a.address, "pinned key mismatch", "expected " + c_fp, "got " + a_fp);
  auto again = b.call(a.address, "whoami");
  CHECK(again.ok());
  CHECK(a.node->stats().calls_served == 2);
}

TEST_CASE("a plain client hears that the node speaks only TLS; a TLS client refuses a plain node") {
  Pki pki;
  Server server(options_for("srv", pki.identity("srv")));
  NodeOptions plain_options;
  plain_options.name = "plain";
  Node plain(plain_options);
  auto r = plain.call(server.address, "kv.keys");
  REQUIRE(!r.ok());
  CHECK_ERROR(r, Errc::remote_protocol_error, server.address, "insecure transport", "--tls DIR");
  CHECK(server.node->stats().calls_served == 0);

  auto plain_address = plain.listen("127.0.0.1:0");
  REQUIRE(plain_address.ok());
  Node client(options_for("cli", pki.identity("cli")));
  auto t = client.call(*plain_address, "kv.keys");
  REQUIRE(!t.ok());
  CHECK_ERROR(t, Errc::tls_handshake_failed, *plain_address, "does not speak TLS");
  CHECK(plain.stats().calls_served == 0);
}

TEST_CASE("plain TCP is refused on a non-loopback address unless insecure, and a bad TLS directory is a clear error") {
  NodeOptions o;
  o.name = "plain";
  Node plain(o);
  auto refused = plain.listen("0.0.0.0:0");
  REQUIRE(!refused.ok());
  CHECK_ERROR(refused, Errc::insecure_transport, "0.0.0.0:0", "--tls DIR", "--insecure");
  CHECK(plain.listen("127.0.0.1:0").ok());
  o.insecure_plain_tcp = true;
  Node insecure(o);
  CHECK(insecure.listen("0.0.0.0:0").ok());

  test::TempDir empty;
  Node broken(options_for("broken", empty.path()));
  auto b = broken.listen("127.0.0.1:0");
  REQUIRE(!b.ok());
  CHECK_ERROR(b, Errc::tls_config, "no identity in " + empty.path(), "sojourn keygen");
  auto c = broken.call("127.0.0.1:1", "kv.keys");
  CHECK(c.error().code == Errc::tls_config);
}

TEST_CASE("a mobile agent hops between two TLS nodes and reports home; a module is fetched between them") {
  Pki pki;
  Server a(options_for("a", pki.identity("a")));
  Server b(options_for("b", pki.identity("b")));
  REQUIRE(a.node->call_local("kv.put", Value::array({"price", 100})).ok());
  REQUIRE(b.node->call_local("kv.put", Value::array({"price", 90})).ok());
  constexpr const char* kHop = R"(
local M = {}
function M.start(s)
  s.prices = { node.call("kv.get", "price") }
  agent.go(agent.itinerary[1], "there")
end
function M.there(s)
  s.prices[#s.prices + 1] = node.call("kv.get", "price")
  return s.prices
end
return M
)";
  auto bundle = single_file_bundle("hop", kHop, {"start", "there"});
  REQUIRE(bundle.ok());
  AgentLaunch launch;
  launch.bundle = *bundle;
  launch.itinerary = {b.address};
  launch.owner = "tester";
  auto id = a.node->launch(a.address, launch);
  REQUIRE(id.ok());
  auto status = a.node->wait_agent(a.address, *id, 10s);
  REQUIRE(status.ok());
  CHECK(status->status == AgentState::finished);
  CHECK(status->reason == "");
  auto prices = value_to_json(status->result.get(1));
  REQUIRE(prices.ok());
  CHECK(*prices == "[100,90]");
  REQUIRE(status->hops.size() == 2);
  CHECK(status->hops[1].node == b.address);
  CHECK(a.node->stats().connections_refused == 0);
  CHECK(b.node->stats().connections_refused == 0);

  // Code-on-demand between the same nodes: the module crosses the TLS link and runs at a.
  REQUIRE(b.node->publish("double", "local x = ... ; return x * 2").ok());
  auto module = a.node->fetch(b.address, "double");
  REQUIRE(module.ok());
  auto doubled = a.node->run_module(*module, Value::array({21}));
  REQUIRE(doubled.ok());
  CHECK(doubled->get(1).as_integer() == 42);
}

namespace {
class CountingHandler : public RequestHandler {
 public:
  asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind, std::vector<std::uint8_t> payload, PeerIdentity) override {
    ++handled;
    co_return payload;
  }
  std::atomic<int> handled{0};
};
}  // namespace

TEST_CASE("a peer that connects and never finishes its handshake is dropped at the deadline, with the reason") {
  Pki pki;
  std::string dir = pki.identity("srv");
  asio::io_context io{1};
  auto work = asio::make_work_guard(io);
  std::thread thread([&] { io.run(); });
  auto handler = std::make_shared<CountingHandler>();
  TransportOptions options;
  options.tls = *make_tls_context(TlsConfig{dir, "", {}});
  options.frame_timeout = 300ms;
  std::vector<Error> refusals;
  std::mutex mutex;
  options.on_refused = [&](const PeerIdentity&, const Error& e) {
    std::lock_guard lock(mutex);
    refusals.push_back(e);
  };
  auto server = std::make_unique<TcpServer>(io.get_executor(), handler, options);
  std::promise<Result<Address>> bound_promise;
  asio::post(io, [&] { bound_promise.set_value(server->listen(*parse_address("127.0.0.1:0"))); });
  auto bound = bound_promise.get_future().get();
  REQUIRE(bound.ok());

  test::RawSocket silent(bound->port);   // connects, sends nothing
  test::RawSocket half(bound->port);     // starts a ClientHello and stops
  REQUIRE(half.send({0x16, 0x03, 0x01, 0x00, 0x50, 0x01}));
  bool silent_closed = false, half_closed = false;
  silent.read_until_closed(3000, &silent_closed);
  half.read_until_closed(3000, &half_closed);
  CHECK(silent_closed);
  CHECK(half_closed);
  // The deadline closes the socket first; the server reports the refusal just after.
  auto count = [&] {
    std::lock_guard lock(mutex);
    return refusals.size();
  };
  for (int i = 0; i < 400 && count() < 2; ++i) std::this_thread::sleep_for(5ms);
  {
    std::lock_guard lock(mutex);
    CHECK(refusals.size() == 2);
    for (const auto& e : refusals) {
      CHECK(e.code == Errc::tls_handshake_failed);
      CHECK(e.message.find("failed: no answer within 300 ms") != std::string::npos);
    }
  }
  CHECK(handler->handled == 0);
  std::promise<void> stopped;
  asio::post(io, [&] {
    server.reset();
    stopped.set_value();
  });
  stopped.get_future().get();
  work.reset();
  thread.join();
}

TEST_CASE("a policy rule naming a peer matches only that peer's authenticated TLS identity") {
  Pki pki;
  const std::string ops_dir = pki.identity("ops-node");
  const std::string guest_dir = pki.identity("guest-node");
  NodeOptions o = options_for("server", pki.identity("server"));
  o.peer_isolation.reset();  // the policy decides
  auto policy = Policy::parse(R"({
    "rules": [{"name": "operators", "peer": "ops-node", "isolation": ["trusted"]},
              {"name": "by key", "peer": ")" + pki.fingerprint("guest-node") + R"(", "isolation": ["process"],
               "services": ["kv.get"]}],
    "default": {"refuse": true}
  })");
  REQUIRE_MESSAGE(policy.ok(), (policy.ok() ? "" : policy.error().message));
  o.policy = std::make_shared<const Policy>(std::move(*policy));
  Server server(std::move(o));
  REQUIRE(server.node->call_local("kv.put", Value::array({"k", 5})).ok());

  // The operators' node: its certificate's CN matches the first rule.
  Node ops(options_for("ops-node", ops_dir));
  auto as_ops = ops.eval(server.address, "node.call('kv.put', 'k', 6) return node.call('kv.get', 'k')");
  REQUIRE_MESSAGE(as_ops.ok(), (as_ops.ok() ? "" : as_ops.error().message));
  CHECK(as_ops->isolation == Isolation::trusted);
  CHECK(as_ops->results.get(1).as_integer() == 6);

  // Another node of the same CA: matched by its key fingerprint, jailed, kv.get only.
  Node guest(options_for("guest-node", guest_dir));
  auto as_guest = guest.eval(server.address, "return node.call('kv.get', 'k')");
  REQUIRE_MESSAGE(as_guest.ok(), (as_guest.ok() ? "" : as_guest.error().message));
  CHECK(as_guest->isolation == Isolation::process);
  CHECK(as_guest->results.get(1).as_integer() == 6);
  auto put = guest.eval(server.address, "return node.call('kv.put', 'k', 7)");
  REQUIRE_FALSE(put.ok());
  CHECK(put.error().message.find("service kv.put is not granted to this code by the node's policy") !=
        std::string::npos);

  // A third identity of the same CA matches no rule: the default refuses it, and nothing ran
  // (the request is answered with the refusal: it counts as served and failed).
  Node stranger(options_for("stranger", pki.identity("stranger")));
  const auto failed_before = server.node->stats().requests_failed;
  auto refused = stranger.eval(server.address, "node.call('kv.put', 'k', 8) return 1");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::policy_refused);
  MESSAGE(refused.error().message);
  CHECK(server.node->call_local("kv.get", Value::array({"k"}))->as_integer() == 6);
  CHECK(server.node->stats().requests_failed == failed_before + 1);
}
