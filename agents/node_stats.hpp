// Internal: the counters behind Node::stats() and node.info that serving and listening keep.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace sojourn {

struct NodeCounters {
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<std::uint64_t> calls_served{0};
  std::atomic<std::uint64_t> evals_served{0};
  std::atomic<std::uint64_t> requests_failed{0};
  std::atomic<std::uint64_t> connections_refused{0};  // TLS handshakes that failed
};

}  // namespace sojourn
