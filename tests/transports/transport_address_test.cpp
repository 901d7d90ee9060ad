// Addresses as people type them (TCP, IPv6 literals, names, wildcards), dialling them, and the
// in-process transport's registry.
#include <doctest/doctest.h>

#include "tests/support/echo_server.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <string>
#include <vector>

#include "sojourn/transports/link.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::EchoHandler;
using sojourn::test::one_request;

TEST_CASE("addresses parse and print for TCP, IPv6 and in-process peers") {
  CHECK(parse_address("127.0.0.1:7400")->port == 7400);
  CHECK(parse_address("[::1]:80")->host == "::1");
  CHECK(parse_address("[::1]:80")->to_string() == "[::1]:80");
  CHECK(parse_address("inproc://a")->name == "a");
  CHECK_ERROR(parse_address("localhost"), Errc::bad_address, "'localhost'", "host:port");
  CHECK_ERROR(parse_address("h:99999"), Errc::bad_address, "'h:99999'", "65535");
}

TEST_CASE("IPv6 literals, names and wildcards: what people type parses, prints back, and is told apart") {
  auto full = parse_address("[2001:db8::7]:7400");
  REQUIRE(full.ok());
  CHECK(full->host == "2001:db8::7");
  CHECK(full->port == 7400);
  CHECK(full->to_string() == "[2001:db8::7]:7400");
  CHECK(parse_address("node-a.example:7400")->host == "node-a.example");
  CHECK_ERROR(parse_address("::1:7400"), Errc::bad_address, "brackets");
  CHECK_ERROR(parse_address("[::1]7400"), Errc::bad_address, "[v6-address]:port");
  CHECK_ERROR(parse_address("[]:7400"), Errc::bad_address, "empty host");

  CHECK(is_wildcard(*parse_address("0.0.0.0:1")));
  CHECK(is_wildcard(*parse_address("[::]:1")));
  CHECK(is_wildcard(*parse_address("[0:0::0]:1")));
  CHECK_FALSE(is_wildcard(*parse_address("127.0.0.1:1")));
  CHECK_FALSE(is_wildcard(*parse_address("[::1]:1")));
  CHECK_FALSE(is_wildcard(*parse_address("localhost:1")));
  CHECK_FALSE(is_wildcard(*parse_address("inproc://0.0.0.0")));

  // What a wildcard listener is advertised as: a real address of this host, same port.
  std::string interface;
  Address stand_in = interface_address(*parse_address("0.0.0.0:7400"), &interface);
  CHECK(stand_in.port == 7400);
  CHECK_FALSE(is_wildcard(stand_in));
  CHECK_FALSE(interface.empty());
  CHECK(parse_address(stand_in.to_string()).ok());  // printable and parseable again
  Address v6_stand_in = interface_address(*parse_address("[::]:7401"));
  CHECK(v6_stand_in.port == 7401);
  CHECK_FALSE(is_wildcard(v6_stand_in));
}

TEST_CASE("a link dials a host name (resolved asynchronously) and an IPv6 literal") {
  {
    test::EchoServer f;
    auto named = parse_address("localhost:" + std::to_string(f.bound.port));
    REQUIRE(named.ok());
    auto link = f.run([&] { return make_link(f.io.get_executor(), *named, {}); });
    auto reply = f.await(one_request(link, {0, 9}));
    REQUIRE(reply.ok());
    CHECK(reply->payload == std::vector<std::uint8_t>{9, 0});
  }
  // IPv6 loopback: not every machine has it (a container may not).
  const bool has_v6 = [] {
    asio::io_context io;
    asio::ip::tcp::acceptor a(io);
    boost::system::error_code ec;
    a.open(asio::ip::tcp::v6(), ec);
    if (!ec) a.bind(asio::ip::tcp::endpoint(asio::ip::make_address("::1"), 0), ec);
    return !ec;
  }();
  if (!has_v6) {
    MESSAGE("no IPv6 loopback on this machine: the [::1] half is not run");
    return;
  }
  test::EchoServer f({}, "[::1]:0");
  CHECK(f.bound.to_string().rfind("[::1]:", 0) == 0);
  auto link = f.run([&] { return make_link(f.io.get_executor(), *parse_address(f.bound.to_string()), {}); });
  auto reply = f.await(one_request(link, {0, 6}));
  REQUIRE(reply.ok());
  CHECK(reply->payload == std::vector<std::uint8_t>{6, 0});
}

TEST_CASE("the in-process transport reaches a registered handler and refuses unknown names") {
  test::EchoServer f;
  auto handler = std::make_shared<EchoHandler>();
  REQUIRE(register_inproc("transport-test", f.io.get_executor(), handler).ok());
  CHECK_ERROR(register_inproc("transport-test", f.io.get_executor(), handler), Errc::bad_address,
              "'inproc://transport-test'", "already in use");
  auto link = f.run([&] { return make_link(f.io.get_executor(), *parse_address("inproc://transport-test"), {}); });
  auto reply = f.await(one_request(link, {0, 9}));
  REQUIRE(reply.ok());
  CHECK(reply->payload == std::vector<std::uint8_t>{9, 0});
  auto missing = f.run([&] { return make_link(f.io.get_executor(), *parse_address("inproc://nobody"), {}); });
  CHECK_ERROR(f.await(one_request(missing, {0})), Errc::connect_failed, "inproc://nobody");
  unregister_inproc("transport-test");
}
