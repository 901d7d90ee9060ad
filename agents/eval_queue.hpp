// Internal: remote evaluations handed to the worker pool in bursts. A pipelining client's
// queued evaluations are taken by at most a few runners, each running several back to back
// (one worker wake-up per burst, not per request) and handing their replies back to the
// network thread in one post. Included only by node_server.cpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "sojourn/core/messages.hpp"
#include "sojourn/transports/asio.hpp"
#include "sojourn/transports/link.hpp"

namespace sojourn {

// One queued evaluation. The request and the peer live in the awaiting coroutine's frame,
// which waits for the reply. The awaiter's handler lives in the job itself (EvalQueue's
// ResumeWith): one allocation per evaluation, not one for the job and one for the handler.
struct EvalJob {
  const EvalRequest* request = nullptr;
  const PeerIdentity* peer = nullptr;
  Reply reply;
  std::exception_ptr failed;
  bool finished = false;  // reply (or failed) is set
  virtual ~EvalJob() = default;
  // Resumes the awaiter with the outcome, on its executor (in place when already there).
  virtual void resume(std::exception_ptr outcome_failed, Reply outcome) = 0;
  // Runs `f` on the awaiter's executor, later.
  virtual void post(std::function<void()> f) = 0;
};

class EvalQueue {
 public:
  // Runs a burst's jobs, setting each one's reply (or `failed`) and `finished`; the jobs are in
  // arrival order.
  using RunBurst = std::function<void(std::span<EvalJob*> jobs)>;
  // At most `max_runners` workers take from the queue at once, each at most `burst` jobs at a time.
  EvalQueue(asio::thread_pool& pool, std::size_t max_runners, std::size_t burst, RunBurst run)
      : pool_(pool), max_runners_(max_runners == 0 ? 1 : max_runners), burst_(burst == 0 ? 1 : burst),
        run_(std::move(run)) {}
  EvalQueue(const EvalQueue&) = delete;
  EvalQueue& operator=(const EvalQueue&) = delete;

  // The reply to `request`, run on a worker (an exception thrown by the run is rethrown here).
  asio::awaitable<Reply> run(const EvalRequest& request, const PeerIdentity& peer) {
    auto start = [this, &request, &peer](auto handler) {
      auto job = std::make_unique<ResumeWith<decltype(handler)>>(std::move(handler));
      job->request = &request;
      job->peer = &peer;
      enqueue(std::move(job));
    };
    co_return co_await asio::async_initiate<const asio::use_awaitable_t<>, void(std::exception_ptr, Reply)>(
        std::move(start), asio::use_awaitable);
  }

  // Whether evaluations are queued or running: a later one then queues behind them rather
  // than overtaking them on the network thread.
  bool busy() const noexcept { return unfinished_.load(std::memory_order_relaxed) > 0; }
  std::size_t max_runners() const noexcept { return max_runners_; }
  std::size_t burst() const noexcept { return burst_; }

 private:
  template <class Handler>
  struct ResumeWith final : EvalJob {
    explicit ResumeWith(Handler h) : handler(std::move(h)) {}
    void resume(std::exception_ptr outcome_failed, Reply outcome) override {
      auto executor = asio::get_associated_executor(handler);
      asio::dispatch(executor, [h = std::move(handler), e = std::move(outcome_failed), r = std::move(outcome)]() mutable {
        std::move(h)(e, std::move(r));
      });
    }
    void post(std::function<void()> f) override { asio::post(asio::get_associated_executor(handler), std::move(f)); }
    Handler handler;
  };

  void enqueue(std::unique_ptr<EvalJob> job);
  void runner();

  asio::thread_pool& pool_;
  const std::size_t max_runners_;
  const std::size_t burst_;
  RunBurst run_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<EvalJob>> queued_;  // in arrival order; taken from the front
  std::size_t taken_ = 0;                         // queued_[0, taken_) are already taken
  std::size_t runners_ = 0;
  std::atomic<std::size_t> unfinished_{0};  // enqueued, not yet run to the end
};

}  // namespace sojourn
