// Test support: a TCP server with any handler on its own io_context thread, and an echo
// handler that answers with the payload reversed, with the knobs the transport tests turn (a
// delay, an answer from the reader itself, a handler error, a reply held back or dropped).
// Includes Asio: tests only.
#pragma once

#include "sojourn/transports/asio.hpp"  // first: it includes <utility> before Asio

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/core/frame.hpp"
#include "sojourn/transports/link.hpp"

namespace sojourn::test {

// Replies with the payload reversed. What the payload's bytes ask for:
//  - first byte kAtOnce: answered by the connection's reader itself (handle_now);
//  - first byte kFail: the handler fails with malformed_payload "malformed payload: test";
//  - otherwise the first byte is a delay in ms before the reply;
//  - two bytes with the second kDropReply / kHoldReply: the reply is dropped (the connection
//    closes after the work) / held back 500 ms.
class EchoHandler : public RequestHandler {
 public:
  static constexpr std::uint8_t kAtOnce = 0xA0;
  static constexpr std::uint8_t kFail = 0xEE;
  static constexpr std::uint8_t kDropReply = 0xD1;
  static constexpr std::uint8_t kHoldReply = 0xD2;

  std::atomic<int> handled{0};  // requests that reached handle or handle_now

  ReplyFault reply_fault(FrameKind, std::span<const std::uint8_t> payload) override {
    ReplyFault fault;
    if (payload.size() == 2 && payload[1] == kDropReply) fault.drop = true;
    if (payload.size() == 2 && payload[1] == kHoldReply) fault.delay = std::chrono::milliseconds(500);
    return fault;
  }

  asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind, std::vector<std::uint8_t> payload,
                                                            PeerIdentity) override {
    ++handled;
    if (!payload.empty() && payload[0] == kFail) co_return make_error(Errc::malformed_payload, "malformed payload: test");
    if (!payload.empty() && payload[0] > 0) {
      asio::steady_timer t(co_await asio::this_coro::executor);
      t.expires_after(std::chrono::milliseconds(payload[0]));
      co_await t.async_wait(asio::use_awaitable);
    }
    co_return std::vector<std::uint8_t>(payload.rbegin(), payload.rend());
  }

  std::optional<Result<std::vector<std::uint8_t>>> handle_now(FrameKind, std::span<const std::uint8_t> payload,
                                                              const PeerIdentity&) override {
    if (payload.empty() || payload[0] != kAtOnce) return std::nullopt;
    ++handled;
    return Result<std::vector<std::uint8_t>>(std::vector<std::uint8_t>(payload.rbegin(), payload.rend()));
  }
};

// One request on `link`. Parameters, not lambda captures: a coroutine's frame keeps its
// parameters alive.
inline asio::awaitable<Result<Frame>> one_request(std::shared_ptr<Link> link, std::vector<std::uint8_t> payload,
                                                  std::chrono::milliseconds timeout = std::chrono::milliseconds(2000)) {
  co_return co_await link->request(FrameKind::call, std::move(payload), timeout);
}

// A Handler behind a TcpServer listening on `listen`, served by one io_context thread.
template <class Handler>
struct ServerThread {
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{io.get_executor()};
  std::thread thread{[this] { io.run(); }};
  std::shared_ptr<Handler> handler = std::make_shared<Handler>();
  std::unique_ptr<TcpServer> server;
  Address bound;

  // Runs f on the io thread and returns its result.
  template <class F>
  auto run(F f) {
    // A packaged_task given to post() directly would be taken as a completion token.
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto fut = task->get_future();
    asio::post(io, [task] { (*task)(); });
    return fut.get();
  }
  template <class T>
  T await(asio::awaitable<T> a) {
    return asio::co_spawn(io, std::move(a), asio::use_future).get();
  }

  explicit ServerThread(TransportOptions options = {}, const std::string& listen = "127.0.0.1:0") {
    server = std::make_unique<TcpServer>(io.get_executor(), handler, options);
    auto r = run([&] { return server->listen(*parse_address(listen)); });
    REQUIRE(r.ok());
    bound = *r;
  }
  ~ServerThread() {
    run([&] {
      server.reset();
      return 0;
    });
    work.reset();
    io.stop();
    thread.join();
  }
  ServerThread(const ServerThread&) = delete;
  ServerThread& operator=(const ServerThread&) = delete;

  std::shared_ptr<Link> dial(TransportOptions options = {}) {
    return run([&] { return make_link(io.get_executor(), bound, options); });
  }
};

using EchoServer = ServerThread<EchoHandler>;

}  // namespace sojourn::test
