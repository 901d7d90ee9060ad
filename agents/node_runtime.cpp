// A node's threads and lifecycle (node_runtime.hpp).
#include "agents/node_runtime.hpp"

#include <algorithm>

namespace sojourn {

NodeRuntime::NodeRuntime(std::size_t worker_threads) : workers_(std::max<std::size_t>(1, worker_threads)) {}

void NodeRuntime::start() {
  // The work guard keeps run() from returning before stop().
  work_.emplace(io_.get_executor());
  network_thread_ = std::thread([this] {
    io_.run();
    std::lock_guard lock(idle_mutex_);
    network_ended_ = true;
    idle_.notify_all();
  });
}

NodeRuntime::InFlight::InFlight(NodeRuntime& runtime) : runtime_(runtime) { ++runtime_.in_flight_; }

NodeRuntime::InFlight::~InFlight() {
  if (--runtime_.in_flight_ != 0) return;
  // Both sequentially consistent: either this load sees a waiter (wait_idle raised the count
  // before reading in_flight_) or that waiter's read sees zero and it does not wait. Most
  // requests (every one served in place) end with no one waiting: no lock, no notify.
  if (runtime_.idle_waiters_.load() == 0) return;
  // Under the mutex: a shutdown that just saw a non-zero count is waiting by now.
  std::lock_guard lock(runtime_.idle_mutex_);
  runtime_.idle_.notify_all();
}

bool NodeRuntime::wait_idle(std::chrono::milliseconds budget) {
  std::unique_lock lock(idle_mutex_);
  // Raised before the predicate first reads in_flight_, under the mutex the notifier takes.
  ++idle_waiters_;
  const bool idle = idle_.wait_for(lock, budget, [this] { return in_flight_ == 0; });
  --idle_waiters_;
  return idle;
}

void NodeRuntime::stop(std::chrono::milliseconds budget) {
  workers_.join();
  // With the guard gone, run() returns once every connection and timer has finished.
  work_.reset();
  bool ended = false;
  {
    std::unique_lock lock(idle_mutex_);
    ended = idle_.wait_for(lock, budget, [this] { return network_ended_; });
  }
  if (!ended) io_.stop();
  if (network_thread_.joinable()) network_thread_.join();
}

}  // namespace sojourn
