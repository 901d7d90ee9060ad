// The node's queue of remote evaluations (agents/eval_queue.hpp): bursts, order, replies.
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
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
