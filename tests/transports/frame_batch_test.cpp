// A server connection's batches: the frames one read brings (answered in order, a bad one
// in their midst), large frames split over many reads, and the read budget before a
// large payload is allocated.
#include <doctest/doctest.h>

#include "sojourn/transports/asio.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/transports/link.hpp"
#include "tests/support/echo_server.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/raw_socket.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

// Answers every request at once, by the reader (handle_now), with its payload reversed.
class ReverseHandler : public RequestHandler {
 public:
  asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind, std::vector<std::uint8_t> payload,
                                                            PeerIdentity) override {
    co_return std::vector<std::uint8_t>(payload.rbegin(), payload.rend());
  }
  std::optional<Result<std::vector<std::uint8_t>>> handle_now(FrameKind, std::span<const std::uint8_t> payload,
                                                              const PeerIdentity&) override {
    return Result<std::vector<std::uint8_t>>(std::vector<std::uint8_t>(payload.rbegin(), payload.rend()));
  }
};

// Answers at once only payloads whose first byte is even; the others wait for handle().
class HalfAtOnceHandler : public ReverseHandler {
 public:
  std::optional<Result<std::vector<std::uint8_t>>> handle_now(FrameKind kind, std::span<const std::uint8_t> payload,
                                                              const PeerIdentity& peer) override {
    if (payload.empty() || payload[0] % 2 != 0) return std::nullopt;
    return ReverseHandler::handle_now(kind, payload, peer);
  }
};

// The reverse handler behind a TcpServer on its own io thread (tests/support/echo_server.hpp).
struct Server : test::ServerThread<ReverseHandler> {
  using ServerThread::ServerThread;
  ServerStats stats() {
    return run([&] { return server->stats(); });
  }
};

std::vector<std::uint8_t> frame(std::uint64_t id, std::vector<std::uint8_t> payload) {
  return encode_frame(FrameKind::call, id, payload);
}

void append(std::vector<std::uint8_t>& to, const std::vector<std::uint8_t>& bytes) {
  to.insert(to.end(), bytes.begin(), bytes.end());
}

// A payload whose bytes depend on their place and on `seed`: a stale or shifted byte shows.
std::vector<std::uint8_t> pattern(std::size_t n, std::uint8_t seed) {
  std::vector<std::uint8_t> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>((i * 31 + seed) ^ (i >> 9));
  return out;
}

std::vector<Frame> frames_of(const std::vector<std::uint8_t>& bytes) {
  FrameDecoder d;
  REQUIRE(d.feed(bytes).ok());
  return d.frames();
}

// Reads until `count` frames have come (or 5 s have passed).
std::vector<Frame> read_frames(test::RawSocket& socket, std::size_t count) {
  FrameDecoder d(kDefaultMaxPayload);
  const auto give_up = std::chrono::steady_clock::now() + 5s;
  while (d.frames().size() < count && std::chrono::steady_clock::now() < give_up) {
    REQUIRE(d.feed(socket.read_until_closed(20)).ok());  // what came until 20 ms of silence
  }
  return d.frames();
}

}  // namespace

TEST_CASE("pipelined requests that arrive in one read are answered in order, each with its id") {
  Server s;
  test::RawSocket client(s.bound.port);
  REQUIRE(client.connected());
  std::vector<std::uint8_t> burst;
  constexpr std::uint64_t kCount = 200;
  for (std::uint64_t id = 1; id <= kCount; ++id) append(burst, frame(id * 7, {static_cast<std::uint8_t>(id), 0xAB}));
  REQUIRE(client.send(burst));  // one write: the server's first read holds many of them
  auto replies = read_frames(client, kCount);
  REQUIRE(replies.size() == kCount);
  for (std::uint64_t id = 1; id <= kCount; ++id) {
    const Frame& r = replies[id - 1];
    CHECK(r.header.kind == FrameKind::reply);
    CHECK(r.header.request_id == id * 7);
    CHECK(r.payload == std::vector<std::uint8_t>{0xAB, static_cast<std::uint8_t>(id)});
  }
}

TEST_CASE("one read of requests answered at once, requests that wait and pings: each gets its own answer") {
  test::ServerThread<HalfAtOnceHandler> s;
  test::RawSocket client(s.bound.port);
  REQUIRE(client.connected());
  std::vector<std::uint8_t> burst;
  constexpr std::uint64_t kCount = 120;
  for (std::uint64_t id = 1; id <= kCount; ++id) {
    if (id % 5 == 0) {
      append(burst, encode_frame(FrameKind::ping, id, {}));
    } else {
      // Even first bytes are answered by the reader in place, odd ones in a coroutine of their
      // own, from a copy of a payload the next frames' bytes follow in the read buffer.
      append(burst, frame(id, {static_cast<std::uint8_t>(id), 0xCD, static_cast<std::uint8_t>(id * 3)}));
    }
  }
  REQUIRE(client.send(burst));
  auto replies = read_frames(client, kCount);
  REQUIRE(replies.size() == kCount);
  std::vector<bool> seen(kCount + 1, false);
  for (const Frame& r : replies) {
    const std::uint64_t id = r.header.request_id;
    REQUIRE(id >= 1);
    REQUIRE(id <= kCount);
    CHECK_FALSE(seen[id]);
    seen[id] = true;
    if (id % 5 == 0) {
      CHECK(r.header.kind == FrameKind::pong);
      CHECK(r.payload.empty());
    } else {
      CHECK(r.header.kind == FrameKind::reply);
      CHECK(r.payload == std::vector<std::uint8_t>{static_cast<std::uint8_t>(id * 3), 0xCD, static_cast<std::uint8_t>(id)});
    }
  }
}

TEST_CASE("a batch of small and large replies leaves in order, each payload whole") {
  Server s;
  test::RawSocket client(s.bound.port);
  // Replies up to 2 KiB are copied into the connection's packed buffer, larger ones are
  // written from where they are: the write interleaves the two kinds.
  const std::vector<std::size_t> sizes{0, 5, 2048, 2049, 1, 40000, 3, 3, 100000, 2047, 0, 70000};
  std::vector<std::uint8_t> burst;
  for (std::size_t i = 0; i < sizes.size(); ++i) append(burst, frame(i + 1, pattern(sizes[i], static_cast<std::uint8_t>(i))));
  REQUIRE(client.send(burst));
  auto replies = read_frames(client, sizes.size());
  REQUIRE(replies.size() == sizes.size());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    CAPTURE(i);
    auto payload = pattern(sizes[i], static_cast<std::uint8_t>(i));
    CHECK(replies[i].header.request_id == i + 1);
    REQUIRE(replies[i].payload.size() == sizes[i]);
    CHECK(std::equal(replies[i].payload.begin(), replies[i].payload.end(), payload.rbegin()));
  }
}

TEST_CASE("requests read into the buffers of replies written before them carry only their own bytes") {
  Server s;
  test::RawSocket client(s.bound.port);
  REQUIRE(client.connected());
  // Rounds of requests whose sizes go up and down around what a connection keeps of the
  // buffers it wrote: each round's payloads are read into the previous round's replies.
  const std::vector<std::size_t> sizes{200, 3, 256, 0, 257, 17, 255, 128, 1, 240};
  std::uint64_t id = 0;
  for (int round = 0; round < 6; ++round) {
    std::vector<std::uint8_t> burst;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const std::size_t n = sizes[(i + round) % sizes.size()];
      ++id;
      append(burst, frame(id, pattern(n, static_cast<std::uint8_t>(id))));
    }
    REQUIRE(client.send(burst));
    auto replies = read_frames(client, sizes.size());
    REQUIRE(replies.size() == sizes.size());
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      CAPTURE(round);
      CAPTURE(i);
      const std::uint64_t want = id - sizes.size() + 1 + i;
      const auto payload = pattern(sizes[(i + round) % sizes.size()], static_cast<std::uint8_t>(want));
      CHECK(replies[i].header.request_id == want);
      REQUIRE(replies[i].payload.size() == payload.size());
      CHECK(std::equal(replies[i].payload.begin(), replies[i].payload.end(), payload.rbegin()));
    }
  }
}

TEST_CASE("a bad frame amid a batch: the replies before it go out, then the protocol error, then the connection closes") {
  Server s;
  test::RawSocket bad(s.bound.port);
  std::vector<std::uint8_t> burst;
  for (std::uint64_t id = 1; id <= 3; ++id) append(burst, frame(id, {static_cast<std::uint8_t>(id)}));
  auto broken = frame(4, {4});
  broken[0] ^= 0xFF;  // bad magic
  append(burst, broken);
  append(burst, frame(5, {5}));  // after the bad frame: never read
  REQUIRE(bad.send(burst));
  bool closed = false;
  auto got = frames_of(bad.read_until_closed(2000, &closed));
  CHECK(closed);
  REQUIRE(got.size() == 4);
  for (std::uint64_t id = 1; id <= 3; ++id) {
    CHECK(got[id - 1].header.kind == FrameKind::reply);
    CHECK(got[id - 1].header.request_id == id);
  }
  CHECK(got[3].header.kind == FrameKind::protocol_error);
  auto pe = decode_protocol_error(got[3].payload);
  REQUIRE(pe.ok());
  CHECK(pe->code == Errc::bad_magic);
  // The server serves the next connection.
  test::RawSocket good(s.bound.port);
  REQUIRE(good.send(frame(9, {1, 2})));
  auto replies = read_frames(good, 1);
  REQUIRE(replies.size() == 1);
  CHECK(replies[0].header.request_id == 9);
  CHECK(replies[0].payload == std::vector<std::uint8_t>{2, 1});
}

TEST_CASE("large frames split over many reads arrive whole, one after another on a connection") {
  Server s;
  test::RawSocket client(s.bound.port);
  // Sizes around the free part (64 KiB) and past it; a later frame smaller than an earlier
  // one reads into the buffer the earlier reply left: none of its bytes may show.
  const std::vector<std::size_t> sizes{(1u << 20) + 3, 65536, 65537, 300000, (1u << 20) - 5};
  std::uint64_t id = 1;
  for (std::size_t size : sizes) {
    CAPTURE(size);
    auto payload = pattern(size, static_cast<std::uint8_t>(id));
    auto bytes = frame(id, payload);
    for (std::size_t at = 0; at < bytes.size(); at += 50000) {  // many writes, with pauses
      std::vector<std::uint8_t> part(bytes.begin() + static_cast<std::ptrdiff_t>(at),
                                     bytes.begin() + static_cast<std::ptrdiff_t>(std::min(bytes.size(), at + 50000)));
      REQUIRE(client.send(part));
      if (at % 200000 == 0) std::this_thread::sleep_for(1ms);
    }
    auto replies = read_frames(client, 1);
    REQUIRE(replies.size() == 1);
    CHECK(replies[0].header.request_id == id);
    REQUIRE(replies[0].payload.size() == size);
    CHECK(std::equal(replies[0].payload.begin(), replies[0].payload.end(), payload.rbegin()));
    ++id;
  }
  CHECK(s.stats().partial_frame_bytes == 0);  // every frame gave its charge back
}

TEST_CASE("a large frame the read budget cannot hold is refused before its payload is allocated") {
  TransportOptions options;
  options.max_partial_frame_bytes = 32u << 10;  // less than the first charged step (64 KiB)
  Server s(options);
  test::RawSocket client(s.bound.port);
  auto bytes = frame(1, pattern(1u << 20, 1));
  bytes.resize(kFrameHeaderSize + (100u << 10));  // the header and 100 KiB of the payload
  REQUIRE(client.send(bytes));
  bool closed = false;
  auto got = frames_of(client.read_until_closed(2000, &closed));
  CHECK(closed);
  REQUIRE(got.size() == 1);
  REQUIRE(got[0].header.kind == FrameKind::protocol_error);
  auto pe = decode_protocol_error(got[0].payload);
  REQUIRE(pe.ok());
  CHECK(pe->code == Errc::overloaded);
  CHECK(pe->message.find(std::to_string(32u << 10) + " bytes") != std::string::npos);
  auto st = s.stats();
  CHECK(st.partial_frame_bytes == 0);
  CHECK(st.partial_frame_bytes_peak == 0);  // nothing was charged, so nothing allocated past the free part
  // A frame within the free part is still served.
  test::RawSocket small(s.bound.port);
  REQUIRE(small.send(frame(2, pattern(60000, 2))));
  auto replies = read_frames(small, 1);
  REQUIRE(replies.size() == 1);
  CHECK(replies[0].payload.size() == 60000);
}

TEST_CASE("a link's callers woken by one read send again together, and every answer finds its caller") {
  Server s;
  asio::io_context io{1};
  auto link = make_link(io.get_executor(), s.bound, {});
  constexpr int kCallers = 64, kRounds = 50;
  int wrong = 0, done = 0;
  auto rethrow = [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  };
  for (int c = 0; c < kCallers; ++c) {
    asio::co_spawn(
        io,
        [&, c]() -> asio::awaitable<void> {
          for (int r = 0; r < kRounds; ++r) {
            std::vector<std::uint8_t> payload{static_cast<std::uint8_t>(c), static_cast<std::uint8_t>(r), 7};
            auto reply = co_await link->request(FrameKind::call, payload, 5000ms);
            if (!reply || reply->payload != std::vector<std::uint8_t>(payload.rbegin(), payload.rend())) ++wrong;
          }
          if (++done == kCallers) link->close();  // ends the link's reader: io.run() returns
        },
        rethrow);
  }
  io.run();
  CHECK(done == kCallers);
  CHECK(wrong == 0);
  CHECK(link->frames_sent() == static_cast<std::uint64_t>(kCallers * kRounds));
}
