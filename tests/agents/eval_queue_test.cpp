// The node's queue of remote evaluations (agents/eval_queue.hpp): bursts, order, replies.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include "agents/eval_queue.hpp"

using namespace sojourn;

namespace {

struct Recorded {
  std::mutex mutex;
  std::vector<std::size_t> bursts;  // each burst's length
  std::vector<std::string> order;   // the sources, in the order they ran
};

EvalQueue::RunBurst recording(Recorded& seen) {
  return [&seen](std::span<EvalJob*> jobs) {
    std::lock_guard lock(seen.mutex);
    seen.bursts.push_back(jobs.size());
    for (EvalJob* job : jobs) {
      seen.order.push_back(job->request->source);
      job->reply = reply_ok(Value(job->request->source));
      job->finished = true;
    }
  };
}

}  // namespace

TEST_CASE("requests spawned together on the network thread make one burst, in order") {
  asio::io_context io;
  asio::thread_pool workers(1);
  Recorded seen;
  EvalQueue queue(workers, 1, 32, recording(seen));
  const PeerIdentity peer;
  std::vector<EvalRequest> requests(10);
  std::vector<std::string> replies(requests.size());
  std::atomic<int> answered{0};
  for (std::size_t i = 0; i < requests.size(); ++i) {
    requests[i].source = "return " + std::to_string(i);
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          Reply reply = co_await queue.run(requests[i], peer);
          if (reply.result.is_string()) replies[i] = reply.result.as_string();
          ++answered;
        },
        asio::detached);
  }
  io.run();
  workers.join();
  CHECK(answered.load() == 10);
  for (std::size_t i = 0; i < requests.size(); ++i) CHECK(replies[i] == requests[i].source);
  // All ten were queued before the runner looked: one burst, not a lone first request.
  REQUIRE(seen.bursts.size() == 1);
  CHECK(seen.bursts[0] == 10);
  for (std::size_t i = 0; i < requests.size(); ++i) CHECK(seen.order[i] == requests[i].source);
}

TEST_CASE("a burst is at most the queue's burst length; later requests run after") {
  asio::io_context io;
  asio::thread_pool workers(1);
  Recorded seen;
  EvalQueue queue(workers, 1, 4, recording(seen));
  const PeerIdentity peer;
  std::vector<EvalRequest> requests(10);
  std::atomic<int> answered{0};
  for (std::size_t i = 0; i < requests.size(); ++i) {
    requests[i].source = "return " + std::to_string(i);
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          (void)co_await queue.run(requests[i], peer);
          ++answered;
        },
        asio::detached);
  }
  io.run();
  workers.join();
  CHECK(answered.load() == 10);
  REQUIRE(seen.bursts.size() == 3);
  CHECK(seen.bursts[0] == 4);
  CHECK(seen.bursts[1] == 4);
  CHECK(seen.bursts[2] == 2);
  for (std::size_t i = 0; i < requests.size(); ++i) CHECK(seen.order[i] == requests[i].source);
  CHECK_FALSE(queue.busy());
}

// A lost or late wake-up shows as a request never answered (or only by the next wave): waves
// of requests come from the network thread with idle gaps, so the runners go back to zero
// between them and the next first request defers its wake-up again, racing the last
// runner's exit; two runners and short bursts bring in the second runner's start as well.
TEST_CASE("waves of requests with idle gaps: every one is answered, none waits for the next wave") {
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  std::thread network([&io] { io.run(); });
  asio::thread_pool workers(2);
  std::atomic<int> runs{0};
  EvalQueue queue(workers, 2, 2, [&runs](std::span<EvalJob*> jobs) {
    for (EvalJob* job : jobs) {
      job->reply = reply_ok(Value(job->request->source));
      job->finished = true;
    }
    runs.fetch_add(static_cast<int>(jobs.size()));
  });
  const PeerIdentity peer;
  constexpr int kWaves = 200;
  std::vector<EvalRequest> requests(40);
  for (std::size_t i = 0; i < requests.size(); ++i) requests[i].source = "return " + std::to_string(i);
  int waited_out = 0;
  std::atomic<int> answered{0};  // in the current wave
  std::atomic<int> wrong{0};
  for (int wave = 0; wave < kWaves; ++wave) {
    const int size = 1 + wave % 13;  // lone requests, a burst or less, several bursts
    answered = 0;
    asio::post(io, [&, size] {
      for (int i = 0; i < size; ++i) {
        asio::co_spawn(
            io,
            [&, i]() -> asio::awaitable<void> {
              Reply reply = co_await queue.run(requests[static_cast<std::size_t>(i)], peer);
              if (!reply.result.is_string() || reply.result.as_string() != requests[static_cast<std::size_t>(i)].source) ++wrong;
              ++answered;
            },
            asio::detached);
      }
    });
    // Each wave is answered on its own, within a generous bound (a loaded machine).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (answered.load() < size && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (answered.load() < size) {
      ++waited_out;
      break;
    }
    // Idle long enough, at times, for the runners to exit; not at others.
    if (wave % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  CHECK(waited_out == 0);
  CHECK(wrong.load() == 0);
  guard.reset();
  if (waited_out == 0) {
    network.join();  // no work left
    workers.join();
    CHECK_FALSE(queue.busy());
  } else {
    // A stuck wake-up: reported, not turned into a hang (the waiting frames go with `io`).
    io.stop();
    network.join();
    workers.stop();
    workers.join();
  }
}

TEST_CASE("an awaiter on the workers' own executor: its deferred wake-up is a worker's post") {
  asio::thread_pool workers(1);
  Recorded seen;
  EvalQueue queue(workers, 1, 8, recording(seen));
  const PeerIdentity peer;
  std::vector<EvalRequest> requests(5);
  std::atomic<int> answered{0};
  for (std::size_t i = 0; i < requests.size(); ++i) {
    requests[i].source = "return " + std::to_string(i);
    asio::co_spawn(
        workers,
        [&, i]() -> asio::awaitable<void> {
          Reply reply = co_await queue.run(requests[i], peer);
          if (reply.result.is_string() && reply.result.as_string() == requests[i].source) ++answered;
        },
        asio::detached);
  }
  workers.join();  // returns once no work is left: every wake-up ran and every awaiter resumed
  CHECK(answered.load() == 5);
  CHECK_FALSE(queue.busy());
  std::size_t total = 0;
  for (std::size_t n : seen.bursts) total += n;
  CHECK(total == 5);
}
