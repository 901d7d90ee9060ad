// Internal: the counters behind Node::stats() and node.info that serving and listening keep,
// the metrics the node's roles feed (docs/observability.md) and the trace of recent events.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "agents/metrics.hpp"

namespace sojourn {

// The metric families of one node; gauges that describe the present (agents by state, state
// bytes, uptime) are set when /metrics is read (agents/http/dashboard_api.cpp).
struct NodeMetrics {
  metrics::CounterFamily requests{"sojourn_requests_total", "Requests served, by service (eval for remote evaluations) and outcome (ok or the error code)", {"service", "outcome"}};
  metrics::HistogramFamily eval_seconds{"sojourn_eval_seconds", "Latency of remote evaluations served, by isolation level", {"isolation"}};
  metrics::HistogramFamily step_seconds{"sojourn_agent_step_seconds", "Latency of agent steps run here, by isolation level", {"isolation"}};
  metrics::CounterFamily jail_starts{"sojourn_jail_starts_total", "Jailed runs started (on a fresh or a warm guest), by isolation level", {"isolation"}};
  metrics::CounterFamily warm_pool_hits{"sojourn_jail_warm_pool_hits_total", "Runs served by a warm guest (no fork on their path), by isolation level", {"isolation"}};
  metrics::GaugeFamily agents{"sojourn_agents", "Agents by state: resident (arriving, queued or running here), asleep, moving, stranded here; finished and failed agents whose home is here and still remembered", {"state"}};
  metrics::CounterFamily hops{"sojourn_agent_hops_total", "Agent hops: in (agents that arrived here), out (hand-overs begun from here)", {"direction"}};
  metrics::CounterFamily bytes{"sojourn_bytes_total", "Payload bytes of the requests served (in) and of their replies (out)", {"direction"}};
  metrics::GaugeFamily state_bytes{"sojourn_agent_state_bytes", "Bytes of the encoded state of the agents resident here", {}};
  metrics::GaugeFamily image_bytes{"sojourn_agent_image_bytes", "Bytes of the heap images resident strong agents hold", {}};
  metrics::CounterFamily errors{"sojourn_errors_total", "Requests that ended in an error, by error code", {"code"}};
  metrics::CounterFamily tls{"sojourn_tls_handshakes_total", "TLS handshakes by listener (node: refusals only, http: both) and outcome (ok, refused)", {"listener", "outcome"}};
  metrics::CounterFamily policy_refusals{"sojourn_policy_refusals_total", "Requests refused by the node's policy (evaluations, agent transfers, calls)", {}};
  metrics::CounterFamily http_requests{"sojourn_http_requests_total", "Requests to the dashboard's HTTP server, by HTTP status", {"status"}};
  metrics::GaugeFamily in_flight{"sojourn_requests_in_flight", "Requests being served now", {}};
  metrics::GaugeFamily uptime{"sojourn_uptime_seconds", "Seconds since the node started", {}};
  // The order /metrics renders them in.
  std::vector<const metrics::Family*> all() const {
    return {&requests, &eval_seconds, &step_seconds, &jail_starts, &warm_pool_hits, &agents, &hops, &bytes,
            &state_bytes, &image_bytes, &errors, &tls, &policy_refusals, &http_requests, &in_flight, &uptime};
  }
};

struct NodeCounters {
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<std::uint64_t> calls_served{0};
  std::atomic<std::uint64_t> evals_served{0};
  std::atomic<std::uint64_t> evals_inline{0};  // served on the network thread
  std::atomic<std::uint64_t> requests_failed{0};
  std::atomic<std::uint64_t> connections_refused{0};  // TLS handshakes that failed
  NodeMetrics metrics;
  metrics::TraceRing trace;
};

}  // namespace sojourn
