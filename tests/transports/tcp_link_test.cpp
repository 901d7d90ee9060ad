// A TCP link from the client's side: replies matched to requests, deadlines, close, reply
// faults, connect failures, descriptors closed on exec, and direct requests (DirectLinks).
#include <doctest/doctest.h>

#include "tests/support/echo_server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <fcntl.h>

#include <algorithm>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "sojourn/transports/direct_link.hpp"
#include "sojourn/transports/link.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::EchoHandler;
using sojourn::test::one_request;

TEST_CASE("a request over TCP gets its own reply") {
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  auto reply = f.await(one_request(link, {0, 1, 2, 3}));
  REQUIRE(reply.ok());
  CHECK(reply->header.kind == FrameKind::reply);
  CHECK(reply->payload == std::vector<std::uint8_t>{3, 2, 1, 0});
}

TEST_CASE("a request larger than the socket takes at once arrives whole, its reply too") {
  // 8 MB: the link's first non-blocking send takes only part of it (the rest goes by an
  // asynchronous write), and a byte lost or repeated at the seam would show in the pattern.
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  std::vector<std::uint8_t> big(8 * 1024 * 1024);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>((i * 131) ^ (i >> 11));
  auto reply = f.await(one_request(link, big));
  REQUIRE(reply.ok());
  std::reverse(big.begin(), big.end());  // the echo handler answers with the payload reversed
  CHECK(reply->payload.size() == big.size());
  CHECK(reply->payload == big);
  // And the link goes on: a small request after it.
  auto small = f.await(one_request(link, {7, 8}));
  REQUIRE(small.ok());
  CHECK(small->payload == std::vector<std::uint8_t>{8, 7});
}

namespace {

// Every socket this process holds: (descriptor, FD_CLOEXEC set).
std::vector<std::pair<int, bool>> sockets_and_cloexec() {
  std::vector<std::pair<int, bool>> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (ec || target.string().rfind("socket:", 0) != 0) continue;
    const int fd = std::stoi(e.path().filename().string());
    const int flags = ::fcntl(fd, F_GETFD);
    if (flags >= 0) out.emplace_back(fd, (flags & FD_CLOEXEC) != 0);
  }
  return out;
}

}  // namespace

TEST_CASE("the listener, an accepted connection and a dialled one are closed on exec (a program the process runs inherits none)") {
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  auto reply = f.await(one_request(link, {0, 1, 2, 3}));
  REQUIRE(reply.ok());
  auto sockets = sockets_and_cloexec();
  CHECK(sockets.size() >= 3);  // the listener, the server's side, the link's side
  for (const auto& [fd, cloexec] : sockets) {
    INFO("socket descriptor " << fd);
    CHECK(cloexec);
  }
}

TEST_CASE("a hundred requests in flight on one connection get replies out of order, each to its sender") {
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  std::vector<std::future<Result<Frame>>> replies;
  f.run([&] {
    for (int i = 0; i < 100; ++i) {
      std::vector<std::uint8_t> p{static_cast<std::uint8_t>(100 - i), static_cast<std::uint8_t>(i)};
      replies.push_back(asio::co_spawn(f.io, one_request(link, p), asio::use_future));
    }
    return 0;
  });
  for (int i = 0; i < 100; ++i) {
    auto r = replies[static_cast<std::size_t>(i)].get();
    REQUIRE(r.ok());
    CHECK(r->payload == std::vector<std::uint8_t>{static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(100 - i)});
  }
  CHECK(f.run([&] { return link->frames_sent(); }) >= 1);
}

namespace {
// Requests one after another: each is resumed by its reply where the reader reads it and
// sends the next at once, in the slot the last one just freed. Returns how many replies
// were each their own request's.
asio::awaitable<int> requests_in_turn(std::shared_ptr<Link> link, std::uint8_t tag, int count) {
  int matched = 0;
  for (int i = 0; i < count; ++i) {
    // First byte 0: answered at once (EchoHandler reads a delay there); three bytes: no
    // fault is asked for.
    const auto n = static_cast<std::uint8_t>(i % 200);
    std::vector<std::uint8_t> p{0, tag, n};
    Result<Frame> r = co_await link->request(FrameKind::call, std::move(p), 2000ms);
    if (r.ok() && r->payload == std::vector<std::uint8_t>{n, tag, 0}) ++matched;
  }
  co_return matched;
}
}  // namespace

TEST_CASE("requests resumed in place by their replies reuse their slots while others wait, each gets its own reply") {
  // The reader resumes a request from the slot's own storage: the request frees the slot
  // and the next takes it (and waits in it) before the reader's call returns.
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  std::vector<std::future<int>> runs;
  f.run([&] {
    for (std::uint8_t tag = 1; tag <= 4; ++tag) {
      runs.push_back(asio::co_spawn(f.io, requests_in_turn(link, tag, 300), asio::use_future));
    }
    return 0;
  });
  for (auto& run : runs) CHECK(run.get() == 300);
}

TEST_CASE("a request that gets no reply in time ends with a timeout") {
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  auto reply = f.await(one_request(link, {200}, 30ms));
  REQUIRE_FALSE(reply.ok());
  CHECK_ERROR(reply, Errc::timeout, f.bound.to_string(), "30 ms");
  // The late reply is dropped and the link stays usable.
  auto next = f.await(one_request(link, {0, 7}));
  REQUIRE(next.ok());
  CHECK(next->payload == std::vector<std::uint8_t>{7, 0});
}

TEST_CASE("requests on one link keep their own deadlines: the late one times out, the others are answered") {
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  // The link's one deadline timer is armed at the first request's (far) deadline; the
  // second's is earlier and must still fire before its reply (250 ms) comes.
  auto slow = f.run([&] { return asio::co_spawn(f.io, one_request(link, {150, 1}, 5000ms), asio::use_future); });
  auto late = f.run([&] { return asio::co_spawn(f.io, one_request(link, {250, 2}, 60ms), asio::use_future); });
  auto quick = f.run([&] { return asio::co_spawn(f.io, one_request(link, {0, 3}, 5000ms), asio::use_future); });
  auto timed_out = late.get();
  REQUIRE_FALSE(timed_out.ok());
  CHECK(timed_out.error() == make_error(Errc::timeout, "request to " + f.bound.to_string() + " timed out after 60 ms"));
  auto answered = quick.get();
  REQUIRE(answered.ok());
  CHECK(answered->payload == std::vector<std::uint8_t>{3, 0});
  auto later = slow.get();
  REQUIRE(later.ok());
  CHECK(later->payload == std::vector<std::uint8_t>{1, 150});
  // After firing, the timer is armed again for the next deadline on the link.
  auto second = f.await(one_request(link, {200, 4}, 30ms));
  CHECK_ERROR(second, Errc::timeout, f.bound.to_string(), "30 ms");
  auto next = f.await(one_request(link, {0, 5}));
  REQUIRE(next.ok());
  CHECK(next->payload == std::vector<std::uint8_t>{5, 0});
}

TEST_CASE("closing a link fails every request in flight on it at once with connection_closed") {
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  std::vector<std::future<Result<Frame>>> replies;
  for (int i = 0; i < 3; ++i) {  // each answered after 255 ms of work and 500 ms held back
    replies.push_back(f.run([&] { return asio::co_spawn(f.io, one_request(link, {255, EchoHandler::kHoldReply}, 30'000ms), asio::use_future); }));
  }
  for (int i = 0; i < 2000 && f.handler->handled < 3; ++i) std::this_thread::sleep_for(1ms);
  REQUIRE(f.handler->handled == 3);
  f.run([&] { link->close(); return 0; });
  for (auto& r : replies) {
    // Woken by the close, not by the replies (which would come) or the deadline.
    REQUIRE(r.wait_for(10s) == std::future_status::ready);
    auto closed = r.get();
    CHECK(closed.error() == errors::connection_closed(f.bound.to_string(), "closed locally"));
  }
  CHECK_FALSE(f.run([&] { return link->usable(); }));
  auto after = f.await(one_request(link, {0, 9}));
  CHECK(after.error() == errors::connection_closed(f.bound.to_string(), "closed locally"));
}

TEST_CASE("a link whose io_context goes away while a request waits for its reply is freed, the request with it") {
  // A waiting request's handler is kept by the link and holds the request's coroutine,
  // which holds the link: destroyed with the reader, not left in a cycle.
  test::EchoServer f;
  std::weak_ptr<Link> weak;
  {
    asio::io_context client_io{1};
    auto link = make_link(client_io.get_executor(), f.bound, {});
    weak = link;
    auto reply = asio::co_spawn(client_io, one_request(std::move(link), {255, EchoHandler::kHoldReply}, 30'000ms),
                                asio::use_future);
    for (int i = 0; i < 2000 && f.handler->handled < 1; ++i) client_io.run_for(1ms);
    REQUIRE(f.handler->handled == 1);
    CHECK(reply.wait_for(0s) == std::future_status::timeout);
    CHECK_FALSE(weak.expired());
  }
  CHECK(weak.expired());
}

TEST_CASE("direct requests from the calling thread: answers, the link's errors, a full pool, and close_all") {
  test::EchoServer f;
  DirectLinks direct(kDefaultMaxPayload, 3000ms, /*max_per_peer=*/1);
  std::vector<std::uint8_t> quick{0, 7};
  auto answered = direct.request(f.bound, FrameKind::call, quick, 2000ms);
  REQUIRE(answered.has_value());
  REQUIRE(answered->ok());
  CHECK((*answered)->payload == std::vector<std::uint8_t>{7, 0});
  CHECK(direct.open_connections() == 1);  // kept for the next request
  // The same timeout as a link's, and the connection that timed out is not reused.
  std::vector<std::uint8_t> slow{200, 1};
  auto late = direct.request(f.bound, FrameKind::call, slow, 30ms);
  REQUIRE(late.has_value());
  CHECK(late->error() == make_error(Errc::timeout, "request to " + f.bound.to_string() + " timed out after 30 ms"));
  CHECK(direct.open_connections() == 0);
  // A reply the server drops closes the connection: connection_closed, as on a link.
  std::vector<std::uint8_t> dropped{0, EchoHandler::kDropReply};
  auto closed = direct.request(f.bound, FrameKind::call, dropped, 2000ms);
  REQUIRE(closed.has_value());
  CHECK(closed->error().code == Errc::connection_closed);
  // A server that never answers (the kernel accepts for it; nobody reads): while the one
  // connection allowed is in use, a second request is told to go elsewhere.
  asio::io_context quiet_io;
  asio::ip::tcp::acceptor silent(quiet_io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  Address mute = f.bound;
  mute.port = silent.local_endpoint().port();
  auto busy = std::async(std::launch::async, [&] { return direct.request(mute, FrameKind::call, quick, 60'000ms); });
  for (int i = 0; i < 5000 && direct.open_connections() == 0; ++i) std::this_thread::sleep_for(1ms);
  REQUIRE(direct.open_connections() == 1);
  CHECK_FALSE(direct.request(mute, FrameKind::call, quick, 2000ms).has_value());
  // close_all wakes the request blocked on it at once, and refuses later ones.
  direct.close_all();
  REQUIRE(busy.wait_for(10s) == std::future_status::ready);
  auto woken = busy.get();
  REQUIRE(woken.has_value());
  CHECK(woken->error() == errors::connection_closed(mute.to_string(), "closed locally"));
  auto refused = direct.request(f.bound, FrameKind::call, quick, 2000ms);
  REQUIRE(refused.has_value());
  CHECK(refused->error() == errors::shutting_down());
  CHECK(direct.open_connections() == 0);
  // Nobody listening: connect_failed, as on a link.
  DirectLinks fresh(kDefaultMaxPayload, 3000ms);
  Address nobody = f.bound;
  nobody.port = 1;
  auto unreachable = fresh.request(nobody, FrameKind::call, quick, 2000ms);
  REQUIRE(unreachable.has_value());
  CHECK_ERROR(*unreachable, Errc::connect_failed, nobody.to_string());
}

TEST_CASE("a handler's reply fault holds a reply back, or closes the connection after the work instead of replying") {
  test::EchoServer f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  // Held back: the reply to a later request on the same connection overtakes it.
  auto held = f.run([&] { return asio::co_spawn(f.io, one_request(link, {0, EchoHandler::kHoldReply}), asio::use_future); });
  auto quick = f.await(one_request(link, {0, 5}));
  REQUIRE(quick.ok());
  CHECK(held.wait_for(0ms) == std::future_status::timeout);
  auto late = held.get();
  REQUIRE(late.ok());
  CHECK(late->payload == std::vector<std::uint8_t>{EchoHandler::kHoldReply, 0});
  // Dropped: the handler ran, and the client sees the connection close instead of a reply.
  const int before = f.handler->handled;
  auto dropped = f.await(one_request(link, {0, EchoHandler::kDropReply}));
  REQUIRE_FALSE(dropped.ok());
  CHECK(dropped.error().code == Errc::connection_closed);
  CHECK(f.handler->handled == before + 1);
}

TEST_CASE("connecting to a port nobody listens on fails with connect_failed") {
  test::EchoServer f;
  auto closed_port = *parse_address("127.0.0.1:1");
  auto link = f.run([&] { return make_link(f.io.get_executor(), closed_port, {}); });
  auto reply = f.await(one_request(link, {0}));
  REQUIRE_FALSE(reply.ok());
  CHECK_ERROR(reply, Errc::connect_failed, "127.0.0.1:1");
  CHECK_FALSE(f.run([&] { return link->usable(); }));
}
