// Work handed from the network thread to the node's worker pool, awaited by a coroutine.
// Internal to agents/: included by the .cpp files that hop (node_server, agent_runtime).
#pragma once

#include <exception>
#include <type_traits>
#include <utility>

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "sojourn/transports/asio.hpp"

namespace sojourn {

// Runs f on the worker pool and resumes the caller on its own executor afterwards.
// (`co_await post(pool, use_awaitable)` would not do: an awaitable always resumes on
// the coroutine's executor, so the work would run on the network thread.) Two posts and no
// coroutine of its own: a co_spawn onto the pool cost a frame and a third post per request.
// An exception thrown by f is rethrown in the caller.
template <class F>
asio::awaitable<std::invoke_result_t<F>> on_workers(asio::thread_pool& pool, F f) {
  using R = std::invoke_result_t<F>;
  auto start = [&pool](auto handler, F work) {
    asio::post(pool, [handler = std::move(handler), work = std::move(work)]() mutable {
      std::exception_ptr failed;
      R r{};
      try {
        r = work();
      } catch (...) {
        failed = std::current_exception();
      }
      auto back = asio::get_associated_executor(handler);
      asio::post(back, [handler = std::move(handler), failed, r = std::move(r)]() mutable {
        std::move(handler)(failed, std::move(r));
      });
    });
  };
  co_return co_await asio::async_initiate<const asio::use_awaitable_t<>, void(std::exception_ptr, R)>(
      std::move(start), asio::use_awaitable, std::move(f));
}

}  // namespace sojourn
