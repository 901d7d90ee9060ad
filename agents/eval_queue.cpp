// Remote evaluations handed to the workers in bursts (eval_queue.hpp).
#include "agents/eval_queue.hpp"

#include <algorithm>

namespace sojourn {

void EvalQueue::enqueue(std::unique_ptr<EvalJob> job) {
  bool start = false;
  unfinished_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard lock(mutex_);
    EvalJob& resume = *job;
    queued_.push_back(std::move(job));
    const std::size_t waiting = queued_.size() - taken_;
    if (runners_ == 0) {
      // The first runner is woken from the awaiter's executor, after the handlers already
      // queued there: a pipelining client's requests read together are spawned together
      // (one posted coroutine each), so the rest of them join the queue before a worker
      // looks at it, and its first burst holds them all rather than the one or two that
      // were queued when a worker woken at once (on the same CPU, ahead of the network
      // thread) took its turn. A lone request waits for no more than that one hop on its
      // own thread. Posted under the lock: no runner exists to take (and free) the job yet.
      ++runners_;
      try {
        resume.post([this] { asio::post(pool_, [this] { runner(); }); });
      } catch (...) {
        start = true;  // not deferred (the post's allocation failed): woken at once, as before
      }
    } else if (runners_ < max_runners_ && waiting > burst_) {
      // Another only when a burst is waiting that the running ones would take turns over.
      ++runners_;
      start = true;
    }
  }
  if (start) asio::post(pool_, [this] { runner(); });
}

void EvalQueue::runner() {
  std::vector<EvalJob*> burst;
  for (;;) {
    auto done = std::make_shared<std::vector<std::unique_ptr<EvalJob>>>();
    {
      std::lock_guard lock(mutex_);
      const std::size_t n = std::min(burst_, queued_.size() - taken_);
      if (n == 0) {
        --runners_;
        return;
      }
      done->reserve(n);  // one allocation, not one per doubling
      for (std::size_t i = 0; i < n; ++i) done->push_back(std::move(queued_[taken_ + i]));
      taken_ += n;
      // Compact once the front is all taken (every runner moves its jobs out first).
      if (taken_ == queued_.size()) {
        queued_.clear();
        taken_ = 0;
      }
    }
    burst.clear();
    for (auto& job : *done) burst.push_back(job.get());
    try {
      run_(burst);
    } catch (...) {
      // An escape fails the jobs the burst had not finished; the finished keep their replies.
      const std::exception_ptr failed = std::current_exception();
      for (EvalJob* job : burst) {
        if (!job->finished) job->failed = failed;
      }
    }
    unfinished_.fetch_sub(done->size(), std::memory_order_relaxed);
    // The burst's replies go back in one post: the network thread resumes the awaiters one
    // after another and their replies leave together.
    EvalJob& first = *done->front();
    first.post([done] {
      for (auto& job : *done) job->resume(job->failed, std::move(job->reply));
    });
  }
}

}  // namespace sojourn
