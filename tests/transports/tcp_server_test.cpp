// A TCP server under hostile or careless clients: each malformed, pipelined-then-bad or
// stalled frame closes only its connection; pings; and the limits on memory held for
// unfinished frames and on open connections.
#include <doctest/doctest.h>

#include "tests/support/echo_server.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/transports/link.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/raw_socket.hpp"

using namespace sojourn;
using namespace std::chrono_literals;
using sojourn::test::EchoHandler;
using sojourn::test::one_request;

namespace {

// Polls the server's stats on its thread until `done` holds (or two seconds pass).
template <class F>
ServerStats wait_for_stats(test::EchoServer& f, F done) {
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

TEST_CASE("each malformed frame closes its connection with a protocol error and the server keeps serving") {
  TransportOptions options;
  options.max_payload = 1024;
  test::EchoServer f(options);
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
  auto bad_payload = encode_frame(FrameKind::call, 1, std::vector<std::uint8_t>{EchoHandler::kFail});
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
  test::EchoServer f;
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
  test::EchoServer f(options);
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

TEST_CASE("sequential requests, each sent after the last reply, whole or in pieces, are answered in order on one connection") {
  // Between frames the reader waits for bytes itself and serves a whole request where it
  // lies; a request that came in part is finished by read_frame(). Both, for requests
  // answered at once and by a coroutine, one after another on one connection.
  test::EchoServer f;
  test::RawSocket s(f.bound.port);
  struct Step {
    std::size_t cut;     // bytes sent first, the rest 20 ms later; 0: the frame in one send
    std::uint8_t first;  // EchoHandler::kAtOnce: answered by the reader; otherwise by a coroutine
  };
  const Step steps[] = {{0, EchoHandler::kAtOnce}, {7, EchoHandler::kAtOnce}, {21, EchoHandler::kAtOnce},
                        {0, 1},                    {20, 1},                    {1, EchoHandler::kAtOnce},
                        {0, EchoHandler::kAtOnce}};
  FrameDecoder d;
  std::uint8_t id = 1;
  for (const Step& step : steps) {
    CAPTURE(int(id));
    auto frame = encode_frame(FrameKind::call, id, std::vector<std::uint8_t>{step.first, id, 7, 8});
    if (step.cut == 0) {
      REQUIRE(s.send(frame));
    } else {
      REQUIRE(s.send(std::vector<std::uint8_t>(frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(step.cut))));
      std::this_thread::sleep_for(20ms);
      REQUIRE(s.send(std::vector<std::uint8_t>(frame.begin() + static_cast<std::ptrdiff_t>(step.cut), frame.end())));
    }
    while (d.frames().empty()) {
      auto got = s.read_some(3000);
      REQUIRE_FALSE(got.empty());
      REQUIRE(d.feed(got).ok());
    }
    REQUIRE(d.frames().size() == 1);
    CHECK(d.frames()[0].header.kind == FrameKind::reply);
    CHECK(d.frames()[0].header.request_id == id);
    CHECK(d.frames()[0].payload == std::vector<std::uint8_t>{8, 7, id, step.first});
    d.frames().clear();
    ++id;
  }
  CHECK(d.pending_bytes() == 0);
}

TEST_CASE("a ping is answered with a pong carrying the same request id") {
  test::EchoServer f;
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

TEST_CASE("headers that declare large payloads hold nothing until the bytes come, and a client is still served") {
  test::EchoServer f;  // the default limits: 16 MiB frames
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
  test::EchoServer f(options);
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
  test::EchoServer f(options);
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
