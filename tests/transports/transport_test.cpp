// TCP and in-process transports: multiplexing, timeouts, and hostile frames that must
// close one connection while the server keeps serving the others.
#include <doctest/doctest.h>

#include "sojourn/transports/asio.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <fcntl.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <map>
#include <optional>
#include <thread>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/transports/direct_link.hpp"
#include "sojourn/transports/link.hpp"
#include "tests/support/raw_socket.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

// A second payload byte asking the server for a reply fault.
constexpr std::uint8_t kDropReply = 0xD1;
constexpr std::uint8_t kHoldReply = 0xD2;

// Replies with the payload reversed, after a delay given by its first byte (ms).
class EchoHandler : public RequestHandler {
 public:
  std::atomic<int> handled{0};

  ReplyFault reply_fault(FrameKind, std::span<const std::uint8_t> payload) override {
    ReplyFault fault;
    if (payload.size() == 2 && payload[1] == kDropReply) fault.drop = true;
    if (payload.size() == 2 && payload[1] == kHoldReply) fault.delay = 500ms;
    return fault;
  }

  asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind, std::vector<std::uint8_t> payload, PeerIdentity) override {
    ++handled;
    if (!payload.empty() && payload[0] == 0xEE) co_return make_error(Errc::malformed_payload, "malformed payload: test");
    if (!payload.empty() && payload[0] > 0) {
      asio::steady_timer t(co_await asio::this_coro::executor);
      t.expires_after(std::chrono::milliseconds(payload[0]));
      co_await t.async_wait(asio::use_awaitable);
    }
    co_return std::vector<std::uint8_t>(payload.rbegin(), payload.rend());
  }

  // A payload starting with kAtOnce is answered by the reader itself (reversed, as above).
  std::optional<Result<std::vector<std::uint8_t>>> handle_now(FrameKind, std::span<const std::uint8_t> payload,
                                                              const PeerIdentity&) override {
    if (payload.empty() || payload[0] != kAtOnce) return std::nullopt;
    ++handled;
    return Result<std::vector<std::uint8_t>>(std::vector<std::uint8_t>(payload.rbegin(), payload.rend()));
  }
  static constexpr std::uint8_t kAtOnce = 0xA0;
};

struct Fixture {
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{io.get_executor()};
  std::thread thread{[this] { io.run(); }};
  std::shared_ptr<EchoHandler> handler = std::make_shared<EchoHandler>();
  std::unique_ptr<TcpServer> server;
  Address bound;

  template <class F>
  auto run(F f) {
    // A packaged_task given to post() directly would be taken as a completion token.
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto fut = task->get_future();
    asio::post(io, [task] { (*task)(); });
    return fut.get();
  }

  Fixture(TransportOptions options = {}, const std::string& listen = "127.0.0.1:0") {
    server = std::make_unique<TcpServer>(io.get_executor(), handler, options);
    auto r = run([&] { return server->listen(*parse_address(listen)); });
    REQUIRE(r.ok());
    bound = *r;
  }
  ~Fixture() {
    run([&] { server.reset(); return 0; });
    work.reset();
    io.stop();
    thread.join();
  }
  template <class T>
  T await(asio::awaitable<T> a) {
    return asio::co_spawn(io, std::move(a), asio::use_future).get();
  }
};

asio::awaitable<Result<Frame>> one_request(std::shared_ptr<Link> link, std::vector<std::uint8_t> payload,
                                           std::chrono::milliseconds timeout = 2000ms) {
  co_return co_await link->request(FrameKind::call, std::move(payload), timeout);
}

}  // namespace

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
    Fixture f;
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
  Fixture f({}, "[::1]:0");
  CHECK(f.bound.to_string().rfind("[::1]:", 0) == 0);
  auto link = f.run([&] { return make_link(f.io.get_executor(), *parse_address(f.bound.to_string()), {}); });
  auto reply = f.await(one_request(link, {0, 6}));
  REQUIRE(reply.ok());
  CHECK(reply->payload == std::vector<std::uint8_t>{6, 0});
}

TEST_CASE("a request over TCP gets its own reply") {
  Fixture f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  auto reply = f.await(one_request(link, {0, 1, 2, 3}));
  REQUIRE(reply.ok());
  CHECK(reply->header.kind == FrameKind::reply);
  CHECK(reply->payload == std::vector<std::uint8_t>{3, 2, 1, 0});
}

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

TEST_CASE("the listener, an accepted connection and a dialled one are closed on exec (a program the process runs inherits none)") {
  Fixture f;
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
  Fixture f;
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

TEST_CASE("a request that gets no reply in time ends with a timeout") {
  Fixture f;
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
  Fixture f;
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
  Fixture f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  std::vector<std::future<Result<Frame>>> replies;
  for (int i = 0; i < 3; ++i) {  // each answered after 255 ms of work and 500 ms held back
    replies.push_back(f.run([&] { return asio::co_spawn(f.io, one_request(link, {255, kHoldReply}, 30'000ms), asio::use_future); }));
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

TEST_CASE("direct requests from the calling thread: answers, the link's errors, a full pool, and close_all") {
  Fixture f;
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
  std::vector<std::uint8_t> dropped{0, kDropReply};
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
  Fixture f;
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  // Held back: the reply to a later request on the same connection overtakes it.
  auto held = f.run([&] { return asio::co_spawn(f.io, one_request(link, {0, kHoldReply}), asio::use_future); });
  auto quick = f.await(one_request(link, {0, 5}));
  REQUIRE(quick.ok());
  CHECK(held.wait_for(0ms) == std::future_status::timeout);
  auto late = held.get();
  REQUIRE(late.ok());
  CHECK(late->payload == std::vector<std::uint8_t>{kHoldReply, 0});
  // Dropped: the handler ran, and the client sees the connection close instead of a reply.
  const int before = f.handler->handled;
  auto dropped = f.await(one_request(link, {0, kDropReply}));
  REQUIRE_FALSE(dropped.ok());
  CHECK(dropped.error().code == Errc::connection_closed);
  CHECK(f.handler->handled == before + 1);
}

TEST_CASE("connecting to a port nobody listens on fails with connect_failed") {
  Fixture f;
  auto closed_port = *parse_address("127.0.0.1:1");
  auto link = f.run([&] { return make_link(f.io.get_executor(), closed_port, {}); });
  auto reply = f.await(one_request(link, {0}));
  REQUIRE_FALSE(reply.ok());
  CHECK_ERROR(reply, Errc::connect_failed, "127.0.0.1:1");
  CHECK_FALSE(f.run([&] { return link->usable(); }));
}

TEST_CASE("each malformed frame closes its connection with a protocol error and the server keeps serving") {
  TransportOptions options;
  options.max_payload = 1024;
  Fixture f(options);
  auto good_header = [](std::uint32_t len) {
    auto h = encode_header(FrameHeader{FrameKind::call, 0, len, 1});
    return std::vector<std::uint8_t>(h.begin(), h.end());
  };
  struct Case {
    const char* name;
    std::vector<std::uint8_t> bytes;
    Errc code;
    std::string message;
    bool then_half_close = false;  // the peer stops sending after these bytes
  };
  auto half_header = good_header(10);
  half_header.resize(7);
  auto bad_magic = good_header(0);
  bad_magic[0] = 'X';
  auto bad_version = good_header(0);
  bad_version[4] = 9;
  auto bad_kind = good_header(0);
  bad_kind[5] = 42;
  auto reply_kind = encode_frame(FrameKind::reply, 1, {});
  auto bad_payload = encode_frame(FrameKind::call, 1, std::vector<std::uint8_t>{0xEE});
  std::vector<Case> cases = {
      {"bad magic", bad_magic, Errc::bad_magic, "bad frame magic 0x4E524A58"},
      {"bad version", bad_version, Errc::bad_version, "unsupported protocol version 9 (this node speaks " + std::to_string(kProtocolVersion) + ")"},
      {"bad kind", bad_kind, Errc::bad_kind, "unknown frame kind 42"},
      {"oversized", good_header(4096), Errc::frame_too_large, "frame payload of 4096 bytes exceeds the limit of 1024 bytes"},
      {"kind a client may not send", reply_kind, Errc::bad_kind, "a client may not send frame kind reply"},
      {"undecodable payload", bad_payload, Errc::malformed_payload, "malformed payload: test"},
      {"frame cut off mid-header", half_header, Errc::truncated, "truncated frame: connection closed after 7 of 20 header bytes", true},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    test::RawSocket s(f.bound.port);
    REQUIRE(s.connected());
    REQUIRE(s.send(c.bytes));
    if (c.then_half_close) s.shutdown_write();
    bool closed = false;
    auto got = s.read_until_closed(2000, &closed);
    CHECK(closed);
    FrameDecoder d;
    REQUIRE(d.feed(got).ok());
    REQUIRE(d.frames().size() == 1);
    CHECK(d.frames()[0].header.kind == FrameKind::protocol_error);
    auto pe = decode_protocol_error(d.frames()[0].payload);
    REQUIRE(pe.ok());
    CHECK(pe->code == c.code);
    CHECK(pe->message == c.message);
  }
  // After all that, a well-behaved client is served.
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, options); });
  auto reply = f.await(one_request(link, {0, 5}));
  REQUIRE(reply.ok());
  CHECK(reply->payload == std::vector<std::uint8_t>{5, 0});
}

TEST_CASE("pipelined requests answered at once each get their reply, and a bad frame behind them closes only that connection") {
  Fixture f;
  // One write: twenty requests the reader answers in place, one that a coroutine answers
  // later (a 1 ms wait), then a ping; all in one segment, so they are read together.
  std::vector<std::uint8_t> burst;
  auto append = [&burst](const std::vector<std::uint8_t>& frame) { burst.insert(burst.end(), frame.begin(), frame.end()); };
  for (std::uint8_t i = 1; i <= 20; ++i) append(encode_frame(FrameKind::call, i, std::vector<std::uint8_t>{EchoHandler::kAtOnce, i}));
  append(encode_frame(FrameKind::call, 21, std::vector<std::uint8_t>{1, 21}));
  append(encode_frame(FrameKind::ping, 22, {}));
  test::RawSocket s(f.bound.port);
  REQUIRE(s.send(burst));
  s.shutdown_write();
  FrameDecoder d;
  REQUIRE(d.feed(s.read_until_closed(5000)).ok());
  REQUIRE(d.frames().size() == 22);
  std::map<std::uint64_t, std::vector<std::uint8_t>> replies;
  for (const Frame& fr : d.frames()) {
    if (fr.header.request_id == 22) {
      CHECK(fr.header.kind == FrameKind::pong);
      continue;
    }
    CHECK(fr.header.kind == FrameKind::reply);
    replies[fr.header.request_id] = fr.payload;
  }
  REQUIRE(replies.size() == 21);
  for (std::uint8_t i = 1; i <= 20; ++i) CHECK(replies[i] == std::vector<std::uint8_t>{i, EchoHandler::kAtOnce});
  CHECK(replies[21] == std::vector<std::uint8_t>{21, 1});
  // Answered requests ahead of a bad frame keep their replies; the bad frame closes the connection.
  std::vector<std::uint8_t> then_bad;
  for (std::uint8_t i = 1; i <= 3; ++i) {
    auto frame = encode_frame(FrameKind::call, i, std::vector<std::uint8_t>{EchoHandler::kAtOnce, i});
    then_bad.insert(then_bad.end(), frame.begin(), frame.end());
  }
  auto bad = encode_frame(FrameKind::reply, 4, {});
  then_bad.insert(then_bad.end(), bad.begin(), bad.end());
  test::RawSocket s2(f.bound.port);
  REQUIRE(s2.send(then_bad));
  bool closed = false;
  FrameDecoder d2;
  REQUIRE(d2.feed(s2.read_until_closed(5000, &closed)).ok());
  CHECK(closed);
  REQUIRE(d2.frames().size() == 4);
  for (std::uint8_t i = 1; i <= 3; ++i) {
    CHECK(d2.frames()[i - 1].header.request_id == i);
    CHECK(d2.frames()[i - 1].payload == std::vector<std::uint8_t>{i, EchoHandler::kAtOnce});
  }
  CHECK(d2.frames()[3].header.kind == FrameKind::protocol_error);
  CHECK(decode_protocol_error(d2.frames()[3].payload)->message == "a client may not send frame kind reply");
  // The server goes on serving.
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, TransportOptions{}); });
  auto reply = f.await(one_request(link, {EchoHandler::kAtOnce, 7}));
  REQUIRE(reply.ok());
  CHECK(reply->payload == std::vector<std::uint8_t>{7, EchoHandler::kAtOnce});
}

TEST_CASE("a frame that stops arriving half way is closed as truncated after the frame timeout") {
  TransportOptions options;
  options.frame_timeout = std::chrono::milliseconds(150);
  Fixture f(options);
  for (std::size_t sent : {std::size_t{7}, std::size_t{25}}) {  // inside the header, inside the payload
    CAPTURE(sent);
    test::RawSocket s(f.bound.port);
    auto frame = encode_frame(FrameKind::call, 1, std::vector<std::uint8_t>(4096, 1));
    frame.resize(sent);
    REQUIRE(s.send(frame));  // and keep the connection open
    auto started = std::chrono::steady_clock::now();
    bool closed = false;
    auto got = s.read_until_closed(5000, &closed);
    CHECK(closed);
    CHECK(std::chrono::steady_clock::now() - started >= std::chrono::milliseconds(100));
    FrameDecoder d;
    REQUIRE(d.feed(got).ok());
    REQUIRE(d.frames().size() == 1);
    std::string expected = sent == 7 ? "truncated frame: 7 of 20 header bytes after 150 ms"
                                     : "truncated frame: 5 of 4096 payload bytes after 150 ms";
    CHECK(decode_protocol_error(d.frames()[0].payload)->message == expected);
  }
  // An idle connection between frames is not cut.
  test::RawSocket idle(f.bound.port);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  REQUIRE(idle.send(encode_frame(FrameKind::ping, 3, {})));
  idle.shutdown_write();
  FrameDecoder d;
  REQUIRE(d.feed(idle.read_until_closed(2000)).ok());
  REQUIRE(d.frames().size() == 1);
  CHECK(d.frames()[0].header.kind == FrameKind::pong);
}

TEST_CASE("a ping is answered with a pong carrying the same request id") {
  Fixture f;
  test::RawSocket s(f.bound.port);
  REQUIRE(s.send(encode_frame(FrameKind::ping, 77, {})));
  s.shutdown_write();
  auto got = s.read_until_closed(2000);
  FrameDecoder d;
  REQUIRE(d.feed(got).ok());
  REQUIRE(d.frames().size() == 1);
  CHECK(d.frames()[0].header.kind == FrameKind::pong);
  CHECK(d.frames()[0].header.request_id == 77);
}

TEST_CASE("the in-process transport reaches a registered handler and refuses unknown names") {
  Fixture f;
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

namespace {

// Polls the server's stats on its thread until `done` holds (or two seconds pass).
template <class F>
ServerStats wait_for_stats(Fixture& f, F done) {
  ServerStats s;
  for (int i = 0; i < 400; ++i) {
    s = f.run([&] { return f.server->stats(); });
    if (done(s)) break;
    std::this_thread::sleep_for(5ms);
  }
  return s;
}

std::vector<std::uint8_t> header_declaring(std::uint32_t length) {
  auto h = encode_header(FrameHeader{FrameKind::call, 0, length, 1});
  return {h.begin(), h.end()};
}

ProtocolError only_protocol_error(const std::vector<std::uint8_t>& bytes) {
  FrameDecoder d;
  REQUIRE(d.feed(bytes).ok());
  REQUIRE(d.frames().size() == 1);
  REQUIRE(d.frames()[0].header.kind == FrameKind::protocol_error);
  auto pe = decode_protocol_error(d.frames()[0].payload);
  REQUIRE(pe.ok());
  return *pe;
}

}  // namespace

TEST_CASE("headers that declare large payloads hold nothing until the bytes come, and a client is still served") {
  Fixture f;  // the default limits: 16 MiB frames
  std::vector<std::unique_ptr<test::RawSocket>> senders;
  for (int i = 0; i < 100; ++i) {
    senders.push_back(std::make_unique<test::RawSocket>(f.bound.port));
    REQUIRE(senders.back()->send(header_declaring(kDefaultMaxPayload)));
  }
  // Every connection is open and its header read; the payloads hold only what arrived: nothing.
  auto s = wait_for_stats(f, [](const ServerStats& st) { return st.connections == 100; });
  CHECK(s.connections == 100);
  std::this_thread::sleep_for(50ms);  // the headers reach the readers
  s = f.run([&] { return f.server->stats(); });
  CHECK(s.partial_frame_bytes == 0);
  CHECK(s.partial_frame_bytes_peak == 0);
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, {}); });
  auto reply = f.await(one_request(link, {0, 4}));
  REQUIRE(reply.ok());
  CHECK(reply->payload == std::vector<std::uint8_t>{4, 0});
}

TEST_CASE("slow senders share one budget: the one that would pass it is closed as overloaded, the others go on") {
  TransportOptions options;
  options.max_partial_frame_bytes = 1u << 20;
  Fixture f(options);
  // Each sends 300 KiB of a 1 MiB payload and stops. Its capacity is 512 KiB (powers of
  // two), of which all but the free first 64 KiB is charged: 448 KiB; the third cannot.
  const std::size_t charged = (512u - 64u) << 10;
  const std::vector<std::uint8_t> part(300u << 10, 7);
  std::vector<std::unique_ptr<test::RawSocket>> senders;
  for (int i = 0; i < 2; ++i) {
    senders.push_back(std::make_unique<test::RawSocket>(f.bound.port));
    REQUIRE(senders.back()->send(header_declaring(1u << 20)));
    REQUIRE(senders.back()->send(part));
  }
  auto s = wait_for_stats(f, [&](const ServerStats& st) { return st.partial_frame_bytes == 2 * charged; });
  CHECK(s.partial_frame_bytes == 2 * charged);
  test::RawSocket third(f.bound.port);
  REQUIRE(third.send(header_declaring(1u << 20)));
  REQUIRE(third.send(part));
  bool closed = false;
  auto got = third.read_until_closed(2000, &closed);
  CHECK(closed);
  auto pe = only_protocol_error(got);
  CHECK_ERROR(pe, Errc::overloaded, "1048576 bytes");
  s = f.run([&] { return f.server->stats(); });
  CHECK(s.partial_frame_bytes_peak <= options.max_partial_frame_bytes);
  CHECK(s.partial_frame_bytes == 2 * charged);  // what the third held went back
  // Small requests need none of the budget: served while it is full.
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, options); });
  auto small = f.await(one_request(link, {0, 6}));
  REQUIRE(small.ok());
  CHECK(small->payload == std::vector<std::uint8_t>{6, 0});
  // A sender that finishes its frame gives its part back, and a larger request then fits.
  REQUIRE(senders[0]->send(std::vector<std::uint8_t>((1u << 20) - part.size(), 0)));
  s = wait_for_stats(f, [&](const ServerStats& st) { return st.partial_frame_bytes == charged; });
  CHECK(s.partial_frame_bytes == charged);
  std::vector<std::uint8_t> larger(200u << 10, 1);
  larger[0] = 0;
  auto reply = f.await(one_request(link, larger));
  REQUIRE(reply.ok());
  CHECK(reply->payload.size() == larger.size());
}

TEST_CASE("past max_connections a connection is closed at accept with the reason; the others are served") {
  TransportOptions options;
  options.max_connections = 4;
  Fixture f(options);
  std::vector<std::unique_ptr<test::RawSocket>> open;
  for (int i = 0; i < 4; ++i) open.push_back(std::make_unique<test::RawSocket>(f.bound.port));
  CHECK(wait_for_stats(f, [](const ServerStats& st) { return st.connections == 4; }).connections == 4);
  test::RawSocket fifth(f.bound.port);
  bool closed = false;
  auto pe = only_protocol_error(fifth.read_until_closed(2000, &closed));
  CHECK(closed);
  CHECK_ERROR(pe, Errc::overloaded, "4 connections");
  CHECK(f.run([&] { return f.server->stats(); }).refused_at_cap == 1);
  // The four already open are served...
  REQUIRE(open[0]->send(encode_frame(FrameKind::ping, 9, {})));
  open[0]->shutdown_write();
  FrameDecoder d;
  REQUIRE(d.feed(open[0]->read_until_closed(2000)).ok());
  REQUIRE(d.frames().size() == 1);
  CHECK(d.frames()[0].header.kind == FrameKind::pong);
  // ...and once one has gone, a new client gets its place.
  CHECK(wait_for_stats(f, [](const ServerStats& st) { return st.connections == 3; }).connections == 3);
  auto link = f.run([&] { return make_link(f.io.get_executor(), f.bound, options); });
  auto reply = f.await(one_request(link, {0, 8}));
  REQUIRE(reply.ok());
  CHECK(reply->payload == std::vector<std::uint8_t>{8, 0});
}
