// A node's memory and connections before anyone is authenticated: frame headers that
// declare large payloads, a connection cap, and a jailed result larger than a reply may be.
#include <doctest/doctest.h>

#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "tests/support/error_checks.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"
#include "tests/support/raw_socket.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

std::uint16_t port_of(const std::string& address) {
  return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// The peak resident size since the last reset_peak_resident() (VmHWM, in bytes).
std::size_t peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

bool reset_peak_resident() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  return static_cast<bool>(clear.flush());
}

std::vector<std::uint8_t> header_declaring(std::uint32_t length) {
  auto h = encode_header(FrameHeader{FrameKind::call, 0, length, 1});
  return {h.begin(), h.end()};
}

std::optional<ProtocolError> protocol_error_in(const std::vector<std::uint8_t>& bytes) {
  FrameDecoder d;
  if (!d.feed(bytes).ok() || d.frames().size() != 1) return std::nullopt;
  if (d.frames()[0].header.kind != FrameKind::protocol_error) return std::nullopt;
  auto pe = decode_protocol_error(d.frames()[0].payload);
  if (!pe) return std::nullopt;
  return *pe;
}

// A ping on `s`, answered without closing.
bool pong_on(test::RawSocket& s) {
  if (!s.send(encode_frame(FrameKind::ping, 5, {}))) return false;
  FrameDecoder d;
  return d.feed(s.read_until_closed(300)).ok() && d.frames().size() == 1 && d.frames()[0].header.kind == FrameKind::pong;
}

}  // namespace

TEST_CASE("forty connections that each send a header declaring 16 MiB leave the node's memory flat; a client is served") {
  Node server{NodeOptions{.name = "server"}};
  Node client{NodeOptions{.name = "client"}};
  auto bound = server.listen("127.0.0.1:0");
  REQUIRE(bound.ok());
  REQUIRE(client.call(*bound, "kv.put", Value::array({"k", "v"})).ok());  // both nodes warm
  const std::size_t before = resident_bytes();
  std::vector<std::unique_ptr<test::RawSocket>> senders;
  for (int i = 0; i < 40; ++i) {
    senders.push_back(std::make_unique<test::RawSocket>(port_of(*bound)));
    REQUIRE(senders.back()->send(header_declaring(kDefaultMaxPayload)));
  }
  std::this_thread::sleep_for(300ms);  // every header read
  auto got = client.call(*bound, "kv.get", Value::array({"k"}));
  REQUIRE(got.ok());
  CHECK(got->as_string() == "v");
  // Allocating what the headers declare would be 640 MiB; what came is 800 bytes.
  const std::size_t grown = resident_bytes() - std::min(before, resident_bytes());
  CAPTURE(grown);
  CHECK(grown < (32u << 20));
}

TEST_CASE("past max_connections a connection is closed at accept with the reason; those open are served") {
  NodeOptions options{.name = "server"};
  options.max_connections = 3;
  Node server{options};
  auto bound = server.listen("127.0.0.1:0");
  REQUIRE(bound.ok());
  std::vector<std::unique_ptr<test::RawSocket>> open;
  for (int i = 0; i < 3; ++i) {
    open.push_back(std::make_unique<test::RawSocket>(port_of(*bound)));
    REQUIRE(pong_on(*open.back()));  // accepted and served
  }
  test::RawSocket fourth(port_of(*bound));
  bool closed = false;
  auto pe = protocol_error_in(fourth.read_until_closed(2000, &closed));
  CHECK(closed);
  REQUIRE(pe);
  CHECK_ERROR(*pe, Errc::overloaded, "3 connections");
  for (auto& s : open) CHECK(pong_on(*s));
  // Once one goes, a new client gets its place.
  open.pop_back();
  Node client{NodeOptions{.name = "client"}};
  Result<Value> info = make_error(Errc::timeout, "not tried");
  for (int attempt = 0; attempt < 50 && !info; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(20ms);
    info = client.call(*bound, "node.info");
  }
  CHECK(info.ok());
}

TEST_CASE("a jailed result larger than a reply may be is refused at its header, never read, decoded or re-encoded") {
  NodeOptions options{.name = "server"};
  options.max_payload = 1u << 20;
  options.peer_isolation = Isolation::process;
  Node server{options};
  Node client{NodeOptions{.name = "client"}};
  auto bound = server.listen("127.0.0.1:0");
  REQUIRE(bound.ok());
  EvalOptions eval;
  eval.isolation = Isolation::process;
  eval.limits.memory_bytes = 256u << 20;
  REQUIRE(client.eval(*bound, "return 1", Value::table(), eval).ok());  // the jail started
  REQUIRE(reset_peak_resident());
  const std::size_t before = peak_resident_bytes();
  auto big = client.eval(*bound, "return string.rep('x', 48 * 1024 * 1024)", Value::table(), eval);
  const std::size_t peak = peak_resident_bytes();
  REQUIRE_FALSE(big.ok());
  CHECK(big.error().code == Errc::frame_too_large);
  CHECK(big.error().message.rfind("frame payload of ", 0) == 0);
  CHECK(big.error().message.find(" bytes exceeds the limit of 1048576 bytes") != std::string::npos);
  // Reading the 48 MiB result, decoding and re-encoding it would take well over 100 MiB here.
  const std::size_t grown = peak - std::min(before, peak);
  CAPTURE(grown);
  CHECK(grown < (24u << 20));
  // The node goes on serving runs in the jail.
  auto small = client.eval(*bound, "return 2", Value::table(), eval);
  REQUIRE(small.ok());
  CHECK(small->results.get(1).as_integer() == 2);
}

TEST_CASE("a malformed call closes its connection with malformed_payload whichever service it names; the node serves on") {
  Node server{NodeOptions{.name = "server"}};
  Node client{NodeOptions{.name = "client"}};
  auto bound = server.listen("127.0.0.1:0");
  REQUIRE(bound.ok());
  REQUIRE(client.call(*bound, "kv.put", Value::array({"k", "v"})).ok());
  // A whole call with bytes after it: the name reads, the rest does not decode.
  auto trailing = [](const std::string& service) {
    std::vector<std::uint8_t> p = encode(CallRequest{service, Value::array({"k"})});
    p.push_back(0x7f);
    return p;
  };
  struct Case {
    const char* what;
    std::vector<std::uint8_t> payload;
  };
  const std::vector<Case> cases = {
      {"served inline (kv.get)", trailing("kv.get")},
      {"served on a worker (kv.put)", trailing("kv.put")},
      {"transfer", trailing("agent.transfer")},
      {"unknown service", trailing("no.such.service")},
      {"cut inside the name's length", {1, 6, 0}},
      {"name longer than the payload", {1, 200, 0, 0, 0, 'k', 'v'}},
      {"empty", {}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    test::RawSocket raw(port_of(*bound));
    REQUIRE(raw.send(encode_frame(FrameKind::call, 7, c.payload)));
    bool closed = false;
    auto pe = protocol_error_in(raw.read_until_closed(2000, &closed));
    CHECK(closed);
    REQUIRE(pe);
    CHECK_ERROR(*pe, Errc::malformed_payload, "call request");
    auto got = client.call(*bound, "kv.get", Value::array({"k"}));
    REQUIRE(got.ok());
    CHECK(got->as_string() == "v");
  }
}
