// Internal: a node's threads and lifecycle: the network thread's io_context, the worker
// pool that runs Lua chunks and services, the requests in flight and the shutdown flags.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "sojourn/transports/asio.hpp"  // <utility> before Asio, see there

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

namespace sojourn {

class NodeRuntime {
 public:
  explicit NodeRuntime(std::size_t worker_threads);
  NodeRuntime(const NodeRuntime&) = delete;
  NodeRuntime& operator=(const NodeRuntime&) = delete;

  // Starts the network thread; it runs until stop().
  void start();

  asio::io_context& io() { return io_; }
  asio::any_io_executor executor() { return io_.get_executor(); }
  asio::thread_pool& workers() { return workers_; }
  bool on_network_thread() { return io_.get_executor().running_in_this_thread(); }
  // Runs f on the network thread and waits for its result (directly when already there).
  template <class F>
  auto run_on_network_thread(F f) -> decltype(f());

  // Set once shutdown begins: new requests and calls are refused.
  bool shutting_down() const { return shutting_down_; }
  void begin_shutdown() { shutting_down_ = true; }
  // Seen by running Lua chunks (RunInput::abort): set, they end with "node is shutting down".
  const std::atomic<bool>* abort_flag() const { return &abort_runs_; }
  void abort_runs() { abort_runs_ = true; }

  // Counts a request in flight; the last one to end wakes a waiting wait_idle.
  class InFlight {
   public:
    explicit InFlight(NodeRuntime& runtime);
    ~InFlight();
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;

   private:
    NodeRuntime& runtime_;
  };
  std::uint64_t in_flight() const { return in_flight_; }
  // Waits, on the node's events (never polling), up to `budget` for no request in flight.
  bool wait_idle(std::chrono::milliseconds budget);
  // Shutdown's last step: joins the workers, lets the network thread end once its
  // connections and timers have (stopping it after `budget`), and joins it.
  void stop(std::chrono::milliseconds budget);

  // Node::shutdown runs once.
  std::once_flag shutdown_once;

 private:
  // wait_idle and stop wait on `idle_` for in_flight_ to reach zero and for the network
  // thread to end (network_ended_); both are signalled, never polled. Declared before
  // `io_`: requests destroyed with `io_` still signal them.
  std::mutex idle_mutex_;
  std::condition_variable idle_;
  bool network_ended_ = false;  // under idle_mutex_
  std::atomic<std::uint64_t> in_flight_{0};
  // wait_idle callers between their check and their wait (raised under idle_mutex_): a
  // request ending at zero with none takes no lock and notifies nobody.
  std::atomic<std::uint32_t> idle_waiters_{0};
  std::atomic<bool> shutting_down_{false};
  std::atomic<bool> abort_runs_{false};
  asio::io_context io_{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  asio::thread_pool workers_;
  std::thread network_thread_;
};

template <class F>
auto NodeRuntime::run_on_network_thread(F f) -> decltype(f()) {
  if (on_network_thread()) return f();
  // A packaged_task given to post() directly would be taken as a completion token.
  auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
  auto result = task->get_future();
  asio::post(io_, [task] { (*task)(); });
  return result.get();
}

}  // namespace sojourn
