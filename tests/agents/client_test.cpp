// A node's client side under concurrency: blocking callers on many threads (carried on
// their own connections) together with coroutine callers (on the shared link), deadlines
// and shutdown while calls are in flight.
#include <doctest/doctest.h>

#include "sojourn/agents/node_async.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

struct TwoNodes {
  Node server{NodeOptions{.name = "server"}};
  Node client;
  std::string address;
  explicit TwoNodes(NodeOptions client_options = NodeOptions{.name = "client"}) : client(std::move(client_options)) {
    // echo returns its first argument; slow sleeps its first argument's milliseconds first.
    server.register_service("echo", [](const Value& args) -> Result<Value> { return args.get(1); },
                            ServiceOptions{.inline_on_network_thread = true});
    server.register_service("slow", [](const Value& args) -> Result<Value> {
      std::this_thread::sleep_for(std::chrono::milliseconds(args.get(1).as_integer()));
      return Value(true);
    });
    auto bound = server.listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    address = *bound;
  }
};

// Built outside the coroutines: g++ 12 rejects a braced list inside a coroutine body.
Value one_arg(std::int64_t v) { return Value::array({v}); }

asio::awaitable<int> coroutine_caller(Node& client, std::string peer, std::int64_t first, int count) {
  int wrong = 0;
  for (int i = 0; i < count; ++i) {
    Value args = one_arg(first + i);
    Result<Value> r = co_await async_call(client, peer, "echo", std::move(args));
    if (!r || !r->is_number() || r->as_integer() != first + i) ++wrong;
  }
  co_return wrong;
}

}  // namespace

TEST_CASE("blocking callers on many threads and coroutine callers at once each get their own answer") {
  TwoNodes n;
  constexpr int kThreads = 8, kCoroutines = 4, kCalls = 150;
  std::atomic<int> wrong{0};
  std::vector<std::future<int>> coroutines;
  for (int c = 0; c < kCoroutines; ++c) {
    coroutines.push_back(asio::co_spawn(node_executor(n.client),
                                        coroutine_caller(n.client, n.address, 1'000'000 * (c + 1), kCalls), asio::use_future));
  }
  // More threads than a peer gets connections of their own: the rest go through the link.
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        const std::int64_t v = 1000 * t + i;
        auto r = n.client.call(n.address, "echo", Value::array({v}));
        if (!r || !r->is_number() || r->as_integer() != v) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& c : coroutines) CHECK(c.get() == 0);
  CHECK(wrong == 0);
  CHECK(n.server.stats().calls_served >= std::uint64_t{(kThreads + kCoroutines) * kCalls});
}

TEST_CASE("a blocking call past its deadline fails with the link's timeout error, and the next call is served") {
  NodeOptions o;
  o.name = "client";
  o.request_timeout = 100ms;
  TwoNodes n(o);
  auto blocking = n.client.call(n.address, "slow", Value::array({600}));
  REQUIRE_FALSE(blocking.ok());
  CHECK(blocking.error() == make_error(Errc::timeout, "request to " + n.address + " timed out after 100 ms"));
  // The coroutine API (the network thread's link) says the same.
  auto task = [&]() -> asio::awaitable<Result<Value>> {
    Value args = one_arg(600);
    co_return co_await async_call(n.client, n.address, "slow", std::move(args));
  };
  auto coroutine = asio::co_spawn(node_executor(n.client), task(), asio::use_future).get();
  CHECK(coroutine.error() == blocking.error());
  // The connection that timed out is not reused (its late reply would be taken for the next).
  auto next = n.client.call(n.address, "echo", Value::array({7}));
  REQUIRE(next.ok());
  CHECK(next->as_integer() == 7);
}

// A service that says when it started and returns once the test lets it.
struct Held {
  std::promise<void> started;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  void install(Node& server) {
    // The service holds its own copy of the future: the worker may still be inside
    // wait_for when the test's Held (declared after the nodes) is gone.
    server.register_service("test.held", [this, released = released](const Value&) -> Result<Value> {
      started.set_value();
      released.wait_for(30s);
      return Value(true);
    });
  }
};

TEST_CASE("a blocking call in flight ends at once when its own node shuts down") {
  TwoNodes n;
  REQUIRE(n.client.call(n.address, "echo", Value::array({1})).ok());
  Held held;
  held.install(n.server);
  auto pending = std::async(std::launch::async, [&] { return n.client.call(n.address, "test.held"); });
  REQUIRE(held.started.get_future().wait_for(30s) == std::future_status::ready);
  n.client.shutdown(0ms);
  // Ended by the shutdown: the service is still holding its answer back.
  REQUIRE(pending.wait_for(30s) == std::future_status::ready);
  auto r = pending.get();
  held.release.set_value();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error() == errors::connection_closed(n.address, "closed locally"));
  CHECK(n.client.call(n.address, "echo", Value::array({1})).error() == errors::shutting_down());
}

TEST_CASE("an idle connection its server closed is not reused: a call after the server stopped cannot connect") {
  TwoNodes n;
  REQUIRE(n.client.call(n.address, "echo", Value::array({1})).ok());
  n.server.shutdown();
  auto after = n.client.call(n.address, "echo", Value::array({1}));
  REQUIRE_FALSE(after.ok());
  CHECK_MESSAGE(after.error().code == Errc::connect_failed, after.error().message);
  CHECK_ERROR(after, Errc::connect_failed, n.address);
}
