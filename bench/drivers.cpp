// Issuing, checking and timing the requests of bench_roundtrip; the sojourn side uses
// the node's blocking and coroutine APIs exactly as an application would.
#include <sojourn/agents/node_async.hpp>  // first: brings <utility> before Asio

#include "bench/drivers.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_future.hpp>

#include <exception>
#include <latch>
#include <stdexcept>

namespace sojourn::bench {

namespace {

double micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

std::string what_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown exception";
  }
}

// kv.get's arguments. Built outside the coroutines: g++ 12 rejects a braced
// initializer list inside a coroutine body ("array used as initializer").
Value key_args() { return Value::array({kKey}); }

Result<Value> blocking_request(Node& client, const SojournRequest& req) {
  if (req.kind == SojournRequest::Kind::call) return client.call(req.peer, "kv.get", key_args());
  Result<EvalResult> r = client.eval(req.peer, kSojournChunk);
  if (!r) return r.error();
  return std::move(r->results);
}

asio::awaitable<Result<Value>> async_request(Node& client, const SojournRequest& req) {
  if (req.kind == SojournRequest::Kind::call) co_return co_await async_call(client, req.peer, "kv.get", key_args());
  // A named EvalOptions rather than the `= {}` default: g++ 12 mis-destroys a braced
  // aggregate temporary inside a co_await expression (AddressSanitizer: bad-free).
  EvalOptions options;
  Result<EvalResult> r = co_await async_eval(client, req.peer, kSojournChunk, Value::table(), options);
  if (!r) co_return r.error();
  co_return std::move(r->results);
}

// Sequential requests from a coroutine on the client node's network thread: unlike
// the blocking API, no hop from the caller's thread to the network thread and back.
asio::awaitable<std::vector<double>> sequential_requests(Node& client, const SojournRequest& req, std::size_t count,
                                                         Clock::time_point deadline) {
  std::vector<double> samples;
  samples.reserve(count);
  for (std::size_t i = 0; i < count && Clock::now() < deadline; ++i) {
    auto t0 = Clock::now();
    Result<Value> r = co_await async_request(client, req);
    samples.push_back(micros(Clock::now() - t0));
    if (auto err = req.check(r); !err.empty()) throw std::runtime_error("sojourn: " + err);
  }
  co_return samples;
}

// The state shared by the coroutines of one windowed run; touched only on the client
// node's network thread, and read by the caller after they have all finished.
struct WindowRun {
  std::size_t total;
  Clock::time_point deadline;
  std::size_t issued = 0;
  std::size_t completed = 0;
  std::string error;
};

// One slot of the window: issues the next request as soon as its previous one is answered.
asio::awaitable<void> window_slot(Node& client, const SojournRequest& req, WindowRun& run) {
  while (run.error.empty() && run.issued < run.total && Clock::now() < run.deadline) {
    ++run.issued;
    Result<Value> r = co_await async_request(client, req);
    if (auto err = req.check(r); !err.empty()) run.error = err;
    else ++run.completed;
  }
}

}  // namespace

std::string SojournRequest::check(const Result<Value>& r) const {
  if (!r) return r.error().message;
  Value v;
  if (kind == Kind::call && r->is_table()) v = r->get("x");
  if (kind == Kind::eval && r->is_table()) v = r->get(1);
  double expected = kind == Kind::call ? 1 : 2;
  if (!v.is_number() || v.as_number() != expected) return "unexpected answer " + to_debug_string(*r);
  return {};
}

void RedisRequest::queue(RespClient& redis) const {
  if (kind == Kind::get) redis.queue({"GET", kKey});
  else redis.queue({"EVALSHA", sha, "1", kKey});
}

void RedisRequest::check(const RespReply& r) const {
  bool ok = kind == Kind::get ? r.type == RespReply::Type::bulk && r.text == "1"
                              : r.type == RespReply::Type::integer && r.integer == 2;
  if (!ok) throw std::runtime_error("redis: unexpected reply " + describe(r));
}

LatencyBlock sojourn_blocking_block(Node& client, const SojournRequest& req) {
  return [&client, &req](std::size_t count, Clock::time_point deadline) {
    std::vector<double> samples;
    samples.reserve(count);
    for (std::size_t i = 0; i < count && Clock::now() < deadline; ++i) {
      auto t0 = Clock::now();
      Result<Value> r = blocking_request(client, req);
      samples.push_back(micros(Clock::now() - t0));
      if (auto err = req.check(r); !err.empty()) throw std::runtime_error("sojourn: " + err);
    }
    return samples;
  };
}

LatencyBlock sojourn_coroutine_block(Node& client, const SojournRequest& req) {
  return [&client, &req](std::size_t count, Clock::time_point deadline) {
    return asio::co_spawn(node_executor(client), sequential_requests(client, req, count, deadline), asio::use_future)
        .get();
  };
}

LatencyBlock redis_block(RespClient& redis, const RedisRequest& req) {
  return [&redis, &req](std::size_t count, Clock::time_point deadline) {
    std::vector<double> samples;
    samples.reserve(count);
    for (std::size_t i = 0; i < count && Clock::now() < deadline; ++i) {
      auto t0 = Clock::now();
      req.queue(redis);
      redis.flush();
      RespReply r = redis.read_reply();
      samples.push_back(micros(Clock::now() - t0));
      req.check(r);
    }
    return samples;
  };
}

Throughput sojourn_window(Node& client, const SojournRequest& req, std::size_t total, std::size_t window,
                          Clock::duration bound) {
  auto start = Clock::now();
  WindowRun run{total, start + bound};
  std::latch slots_done(static_cast<std::ptrdiff_t>(window));
  for (std::size_t i = 0; i < window; ++i) {
    asio::co_spawn(node_executor(client), window_slot(client, req, run), [&run, &slots_done](std::exception_ptr e) {
      if (e && run.error.empty()) run.error = what_of(e);
      slots_done.count_down();
    });
  }
  slots_done.wait();
  Throughput t{run.completed, std::chrono::duration<double>(Clock::now() - start).count()};
  if (!run.error.empty()) throw std::runtime_error("sojourn: " + run.error);
  return t;
}

// Pipelining with a sliding window: whenever k replies come back, k more commands go
// out in one write, so about `window` stay outstanding.
Throughput redis_window(RespClient& redis, const RedisRequest& req, std::size_t total, std::size_t window,
                        Clock::duration bound) {
  auto start = Clock::now();
  auto deadline = start + bound;
  std::size_t sent = 0, completed = 0;
  auto send_more = [&](std::size_t n) {
    for (std::size_t i = 0; i < n && sent < total; ++i, ++sent) req.queue(redis);
    redis.flush();
  };
  send_more(window);
  std::vector<RespReply> ready;
  while (completed < sent) {
    redis.read_ready(ready);
    for (const RespReply& r : ready) req.check(r);
    completed += ready.size();
    if (Clock::now() < deadline) send_more(ready.size());
  }
  return {completed, std::chrono::duration<double>(Clock::now() - start).count()};
}

}  // namespace sojourn::bench
