// A TCP link under many requests at once: each reply finds its own request (ids name a
// reusable slot), deadlines of different lengths fire in their order, a late reply to a
// request that timed out never reaches the next request in its slot; and a server reads
// frames that arrive in pieces between its answers, and a bad one closes only that connection.
#include <doctest/doctest.h>

#include "tests/support/echo_server.hpp"

#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "sojourn/core/frame.hpp"
#include "sojourn/transports/link.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/raw_socket.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

// Payloads starting with kAtOnce are answered by the connection's reader itself; any other
// first byte is a delay in ms before the reversed payload comes back (test::EchoHandler).
constexpr std::uint8_t kAtOnce = test::EchoHandler::kAtOnce;

// The echo server and one link to it, which every request of a test shares.
struct Served : test::EchoServer {
  std::shared_ptr<Link> link = dial();

  ~Served() {
    run([&] {
      link->close();
      return 0;
    });
  }
  std::future<Result<Frame>> start(std::vector<std::uint8_t> payload, std::chrono::milliseconds timeout = 5000ms) {
    return asio::co_spawn(io, test::one_request(link, std::move(payload), timeout), asio::use_future);
  }
};

std::vector<std::uint8_t> reversed(std::vector<std::uint8_t> v) { return {v.rbegin(), v.rend()}; }

}  // namespace

TEST_CASE("a link with hundreds of requests in flight gives each its own reply, one of them slow") {
  Served s;
  // The slow one holds the oldest deadline while hundreds of others come and go behind it.
  auto slow = s.start({150, 1, 2, 3});
  std::vector<std::future<Result<Frame>>> quick;
  std::vector<std::vector<std::uint8_t>> sent;
  for (int i = 0; i < 600; ++i) {
    sent.push_back({kAtOnce, static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(i >> 8)});
    quick.push_back(s.start(sent.back()));
  }
  for (std::size_t i = 0; i < quick.size(); ++i) {
    auto r = quick[i].get();
    REQUIRE(r.ok());
    INFO("request " << i << " got " << (r->payload.size() > 1 ? int(r->payload[1]) : -1) << " of " << r->payload.size() << " bytes, id " << r->header.request_id);
    CHECK(r->payload == reversed(sent[i]));
  }
  auto r = slow.get();
  REQUIRE(r.ok());
  CHECK(r->payload == std::vector<std::uint8_t>{3, 2, 1, 150});
  CHECK(s.link->usable());
}

TEST_CASE("a shorter deadline set after a longer one fires first; the link stays usable") {
  Served s;
  auto patient = s.start({250, 7}, 5000ms);
  auto hasty = s.start({250, 8}, 20ms);
  auto h = hasty.get();
  CHECK_ERROR(h, Errc::timeout, "timed out after 20 ms");
  auto p = patient.get();
  REQUIRE(p.ok());
  CHECK(p->payload == std::vector<std::uint8_t>{7, 250});
  auto again = s.start({kAtOnce, 9}).get();
  REQUIRE(again.ok());
  CHECK(again->payload == std::vector<std::uint8_t>{9, kAtOnce});
}

TEST_CASE("a late reply to a request that timed out never answers the next request in its slot") {
  Served s;
  auto late = s.start({250, 1}, 20ms).get();
  CHECK_ERROR(late, Errc::timeout, "timed out");
  // The timed-out request's slot is free again: this one takes it, with an id of its own,
  // and is still waiting when the late reply {1, 250} comes.
  auto next = s.start({255, 5}).get();
  REQUIRE(next.ok());
  CHECK(next->payload == std::vector<std::uint8_t>{5, 255});
  for (std::uint8_t i = 0; i < 20; ++i) {
    auto r = s.start({kAtOnce, i}).get();
    REQUIRE(r.ok());
    CHECK(r->payload == std::vector<std::uint8_t>{i, kAtOnce});
  }
  for (std::uint8_t i = 20; i < 40; ++i) {
    auto r = s.start({kAtOnce, i}).get();
    REQUIRE(r.ok());
    CHECK(r->payload == std::vector<std::uint8_t>{i, kAtOnce});
  }
  CHECK(s.link->usable());
}

TEST_CASE("a server reads frames that arrive in pieces between its answers") {
  Served s;
  test::RawSocket raw(s.bound.port);
  std::vector<std::uint8_t> first = encode_frame(FrameKind::call, 5, std::vector<std::uint8_t>{kAtOnce, 1, 2});
  std::vector<std::uint8_t> second = encode_frame(FrameKind::call, 6, std::vector<std::uint8_t>{kAtOnce, 3});
  // A whole frame (answered, the socket drained), then one in three pieces with pauses.
  REQUIRE(raw.send(first));
  std::this_thread::sleep_for(30ms);
  REQUIRE(raw.send(std::vector<std::uint8_t>(second.begin(), second.begin() + 3)));
  std::this_thread::sleep_for(30ms);
  REQUIRE(raw.send(std::vector<std::uint8_t>(second.begin() + 3, second.end() - 1)));
  std::this_thread::sleep_for(30ms);
  REQUIRE(raw.send(std::vector<std::uint8_t>(second.end() - 1, second.end())));
  raw.shutdown_write();
  FrameDecoder d;
  REQUIRE(d.feed(raw.read_until_closed(5000)).ok());
  REQUIRE(d.frames().size() == 2);
  CHECK(d.frames()[0].header.request_id == 5);
  CHECK(d.frames()[0].payload == std::vector<std::uint8_t>{2, 1, kAtOnce});
  CHECK(d.frames()[1].header.request_id == 6);
  CHECK(d.frames()[1].payload == std::vector<std::uint8_t>{3, kAtOnce});
  // A bad header after an answered frame closes that connection, and only that one.
  test::RawSocket bad(s.bound.port);
  REQUIRE(bad.send(first));
  std::this_thread::sleep_for(30ms);
  REQUIRE(bad.send(std::vector<std::uint8_t>(kFrameHeaderSize, 0xFF)));
  bool closed = false;
  FrameDecoder d2;
  CHECK(d2.feed(bad.read_until_closed(5000, &closed)).ok());
  CHECK(closed);
  REQUIRE_FALSE(d2.frames().empty());
  CHECK(d2.frames()[0].payload == std::vector<std::uint8_t>{2, 1, kAtOnce});
  CHECK(d2.frames().back().header.kind == FrameKind::protocol_error);
  auto r = s.start({kAtOnce, 4}).get();
  REQUIRE(r.ok());
  CHECK(r->payload == std::vector<std::uint8_t>{4, kAtOnce});
}
