// Node identity and the addresses people use (issue 18): a node accepts what is addressed to
// its id however it was reached (a wildcard listener, localhost, another address), keeps its
// id in --data-dir, and gives others an address they can dial.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/signature.hpp"
#include "sojourn/transports/address.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/trust_nodes.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

using test::port_of;

std::unique_ptr<Node> start_node(const std::string& name, const std::string& listen, const std::string& data_dir = {}) {
  NodeOptions o;
  o.name = name;
  o.insecure_plain_tcp = true;  // a wildcard listener is not loopback
  o.peer_isolation = Isolation::trusted;  // what is tested here is the hand-over, not the jail
  o.retry_backoff = 10ms;
  o.data_dir = data_dir;
  auto node = std::make_unique<Node>(o);
  auto bound = node->listen(listen);
  REQUIRE(bound.ok());
  return node;
}

// Visits each stop of its itinerary and returns where it has been (agent.here at each).
constexpr const char* kTour = R"(local M = {}
function M.start(s) s.seen = {}; return M.next(s) end
function M.next(s)
  s.seen[#s.seen + 1] = agent.here
  if agent.itinerary[1] then agent.go(agent.itinerary[1], "next") end
  return s.seen
end
return M)";

std::string launch_tour(Node& from, const std::string& at, std::vector<std::string> itinerary) {
  auto bundle = single_file_bundle("tour", kTour);
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = std::move(itinerary);
  auto id = from.launch(at, l);
  REQUIRE(id.ok());
  return *id;
}

}  // namespace

TEST_CASE("a node listening on 0.0.0.0 takes agents sent to 127.0.0.1 and localhost, and advertises a dialable address") {
  auto wild = start_node("wild", "0.0.0.0:0");
  auto home = start_node("home", "127.0.0.1:0");
  const std::string port = std::to_string(port_of(wild->advertised_address()));
  // What others are given is an address of an interface, never the wildcard.
  auto advertised = parse_address(wild->advertised_address());
  REQUIRE(advertised.ok());
  CHECK_FALSE(is_wildcard(*advertised));
  CHECK(advertised->host != "0.0.0.0");

  const std::string id =
      launch_tour(*home, home->advertised_address(), {"127.0.0.1:" + port, "localhost:" + port, home->advertised_address()});
  auto status = home->wait_agent(home->advertised_address(), id, 10s);
  REQUIRE(status.ok());
  INFO(status->reason);
  REQUIRE(status->status == AgentState::finished);
  // Both visits to the wildcard node are named by its advertised address.
  REQUIRE(status->hops.size() == 4);
  CHECK(status->hops[1].node == wild->advertised_address());
  CHECK(status->hops[2].node == wild->advertised_address());
  CHECK(status->result.get(1).get(2).as_string() == wild->advertised_address());
}

TEST_CASE("an agent whose home listens on a wildcard address is tracked, and messages reach it") {
  auto home = start_node("home", "0.0.0.0:0");
  auto away = start_node("away", "127.0.0.1:0");
  auto bundle = single_file_bundle("park", R"(local M = {}
function M.start(s) agent.go(agent.itinerary[1], "park") end
function M.park(s)
  local m = agent.receive()
  if m == nil then agent.wait("park") end
  return m.text, agent.home
end
return M)");
  REQUIRE(bundle.ok());
  AgentLaunch l;
  l.bundle = *bundle;
  l.itinerary = {away->advertised_address()};
  // Launched through the loopback address; its home is the advertised one.
  const std::string at = "127.0.0.1:" + std::to_string(port_of(home->advertised_address()));
  auto id = home->launch(at, l);
  REQUIRE(id.ok());
  // Tracked: the home learns it is parked at `away`.
  bool parked = false;
  for (int i = 0; i < 200 && !parked; ++i) {
    auto s = home->agent_status(at, *id);
    REQUIRE(s.ok());
    parked = !s->done() && !s->hops.empty() && s->hops.back().node == away->advertised_address();
    if (!parked) std::this_thread::sleep_for(20ms);
  }
  REQUIRE(parked);
  Value message = Value::table();
  message.set(Value("text"), Value("hello"));
  // A message through the home reaches it; its home is an address others can dial.
  REQUIRE(away->send_to_agent(at, *id, message).ok());
  auto done = home->wait_agent(at, *id, 10s);
  REQUIRE(done.ok());
  INFO(done->reason);
  REQUIRE(done->status == AgentState::finished);
  CHECK(done->result.get(1).as_string() == "hello");
  CHECK(done->result.get(2).as_string() == home->advertised_address());
}

TEST_CASE("a signed evaluation is addressed to the node's id: it runs however the node is dialed") {
  auto node = start_node("target", "0.0.0.0:0");
  auto client = start_node("client", "127.0.0.1:0");
  auto key = test::new_key();
  EvalOptions eo;
  eo.signing_key = key;
  const std::string port = std::to_string(port_of(node->advertised_address()));
  for (const std::string& dialed : {"127.0.0.1:" + port, "localhost:" + port, node->advertised_address()}) {
    INFO(dialed);
    auto r = client->eval(dialed, "return 6 * 7", Value::table(), eo);
    REQUIRE(r.ok());
    CHECK(r->results.get(1).as_integer() == 42);
  }
}

TEST_CASE("node.info names the node's id; the id is kept in --data-dir, fresh without one") {
  test::TempDir dir;
  std::string first_id;
  {
    auto node = start_node("keeper", "127.0.0.1:0", dir.path());
    first_id = node->node_id();
    CHECK(first_id.rfind("node-", 0) == 0);
    CHECK(first_id.size() == 5 + 32);
    auto info = node->call(node->advertised_address(), "node.info");
    REQUIRE(info.ok());
    CHECK(info->get("id").as_string() == first_id);
    std::ifstream in(std::filesystem::path(dir.path()) / "node-id");
    std::string stored;
    std::getline(in, stored);
    CHECK(stored == first_id);
  }
  auto again = start_node("keeper", "127.0.0.1:0", dir.path());
  CHECK(again->node_id() == first_id);  // a restart keeps it
  auto other = start_node("other", "127.0.0.1:0");
  auto other_again = start_node("other", "127.0.0.1:0");
  CHECK(other->node_id() != other_again->node_id());  // without a data dir: fresh per start
  CHECK(other->node_id() != first_id);
}

TEST_CASE("a data dir whose node-id file is damaged is refused at listen, with the file named") {
  test::TempDir dir;
  {
    std::ofstream out(std::filesystem::path(dir.path()) / "node-id");
    out << "not an id\n";
  }
  NodeOptions o;
  o.name = "damaged";
  o.data_dir = dir.path();
  Node node(o);
  auto bound = node.listen("127.0.0.1:0");
  CHECK_ERROR(bound, Errc::invalid_argument, "node-id", "does not hold a node id");
}

TEST_CASE("a node listening on [::] is called at [::1] and takes an agent sent there") {
  NodeOptions o;
  o.name = "v6";
  o.insecure_plain_tcp = true;
  o.peer_isolation = Isolation::trusted;
  Node v6(o);
  auto bound = v6.listen("[::]:0");
  if (!bound) {
    MESSAGE("no IPv6 on this machine (" << bound.error().message << "): not run");
    return;
  }
  CHECK(bound->rfind("[::]:", 0) == 0);
  const std::string dialed = "[::1]:" + std::to_string(port_of(*bound));
  auto home = start_node("home", "127.0.0.1:0");
  auto info = home->call(dialed, "node.info");
  REQUIRE(info.ok());
  CHECK(info->get("id").as_string() == v6.node_id());
  const std::string id = launch_tour(*home, home->advertised_address(), {dialed, home->advertised_address()});
  auto status = home->wait_agent(home->advertised_address(), id, 10s);
  REQUIRE(status.ok());
  INFO(status->reason);
  REQUIRE(status->status == AgentState::finished);
  REQUIRE(status->hops.size() == 3);
  CHECK(status->hops[1].node == v6.advertised_address());
  CHECK(status->hops[1].node.find("[::]") == std::string::npos);
}
