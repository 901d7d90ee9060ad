// The request drivers of bench_roundtrip: how one sojourn or Redis request of a
// workload is issued, checked and timed, sequentially or with a window in flight.
// Asio stays in drivers.cpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include <sojourn/agents/node.hpp>

#include "bench/resp_client.hpp"

namespace sojourn::bench {

using Clock = std::chrono::steady_clock;

// The key both workloads read, and the two programs that read it and add one.
inline constexpr const char* kKey = "k";
inline constexpr const char* kSojournChunk = "local v = node.call('kv.get', 'k'); return v.x + 1";
inline constexpr const char* kRedisScript = "local v = redis.call('GET', KEYS[1]); return tonumber(v) + 1";

// Client-server (kv.get k) or remote evaluation (kSojournChunk) at a sojourn node.
struct SojournRequest {
  enum class Kind { call, eval };
  Kind kind;
  std::string peer;
  // Empty when the answer is the expected one ({x=1} for kv.get, {2} for the chunk).
  std::string check(const Result<Value>& r) const;
};

// The Redis counterpart: GET k, or EVALSHA of kRedisScript with KEYS[1] = k.
struct RedisRequest {
  enum class Kind { get, evalsha };
  Kind kind;
  std::string sha;  // of the loaded script
  void queue(RespClient& redis) const;
  void check(const RespReply& r) const;  // throws std::runtime_error on a wrong answer
};

// Up to `count` sequential requests, each timed (µs), stopping early at `deadline`.
// A wrong answer or an error throws std::runtime_error.
using LatencyBlock = std::function<std::vector<double>(std::size_t count, Clock::time_point deadline)>;

// Node::call / Node::eval from the calling thread.
LatencyBlock sojourn_blocking_block(Node& client, const SojournRequest& req);
// co_await async_call / async_eval in a coroutine on the client node's network thread.
LatencyBlock sojourn_coroutine_block(Node& client, const SojournRequest& req);
LatencyBlock redis_block(RespClient& redis, const RedisRequest& req);

struct Throughput {
  std::size_t completed = 0;
  double seconds = 0;
  double per_second() const { return seconds > 0 ? static_cast<double>(completed) / seconds : 0; }
};

// Up to `total` requests with `window` outstanding on one connection; no new request
// is issued after `bound`, and the ones outstanding then are waited for.
Throughput sojourn_window(Node& client, const SojournRequest& req, std::size_t total, std::size_t window,
                          Clock::duration bound);
Throughput redis_window(RespClient& redis, const RedisRequest& req, std::size_t total, std::size_t window,
                        Clock::duration bound);

}  // namespace sojourn::bench
