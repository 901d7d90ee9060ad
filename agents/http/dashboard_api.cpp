// The dashboard's routes (http/dashboard.hpp): /metrics in the Prometheus text format 0.0.4,
// the JSON API (/api/node, /api/agents, /api/agents/ID, /api/trace?since=N) and the page.
// Everything here reads; nothing launches, sends or changes anything on the node.
#include "agents/agent_runtime.hpp"  // first: brings <utility> before any Asio header
#include "agents/http/dashboard.hpp"
#include "agents/node_stats.hpp"

#include <charconv>
#include <set>

#include <nlohmann/json.hpp>

namespace sojourn {

using json = nlohmann::json;

namespace {

constexpr std::array<AgentState, 5> kCountedStates{AgentState::asleep, AgentState::moving, AgentState::stranded,
                                                   AgentState::finished, AgentState::failed};

double uptime_seconds(const NodeCounters& c) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - c.started).count();
}

// Sets the gauges that describe the present, then renders every family.
std::string render_metrics(const DashboardSources& node) {
  NodeMetrics& m = node.counters.metrics;
  std::map<std::string, double> by_state{{"resident", 0}};
  for (AgentState s : kCountedStates) by_state[std::string(agent_state_name(s))] = 0;
  for (const AgentStatus& a : node.agents.dashboard_agents()) {
    const bool here = a.location == node.agents.self();
    switch (a.status) {
      case AgentState::arriving:
      case AgentState::queued:
      case AgentState::running:
        if (here) by_state["resident"] += 1;
        break;
      default: by_state[std::string(agent_state_name(a.status))] += 1;
    }
  }
  for (const auto& [state, n] : by_state) m.agents.set({state}, n);
  m.state_bytes.set({}, static_cast<double>(node.agents.resident_state_bytes()));
  m.image_bytes.set({}, static_cast<double>(node.agents.resident_image_bytes()));
  // The process jail keeps its own count; a counter that only grows, so storing it is exact.
  m.warm_pool_hits.at({"process"}).store(node.jails.warm_guest_reuses(), std::memory_order_relaxed);
  m.in_flight.set({}, static_cast<double>(node.runtime.in_flight()));
  m.uptime.set({}, uptime_seconds(node.counters));
  std::string out;
  for (const metrics::Family* f : m.all()) f->render(out);
  return out;
}

json hop_json(const AgentHop& h) {
  return {{"node", h.node}, {"epoch", h.epoch}, {"arrived_unix_ms", h.arrived_unix_ms}, {"spent_ms", h.spent_ms},
          {"state_bytes", h.state_bytes}, {"isolation", h.isolation}};
}

json agent_json(const AgentStatus& a, bool full) {
  json hops = json::array();
  for (const AgentHop& h : a.hops) hops.push_back(hop_json(h));
  json j{{"id", a.id},         {"home", a.home},     {"owner", a.owner}, {"location", a.location},
         {"epoch", a.epoch},   {"status", std::string(agent_state_name(a.status))},
         {"reason", a.reason}, {"hops", std::move(hops)}, {"pending_messages", a.pending_messages}};
  if (full) j["log"] = a.log;
  return j;
}

json latency_json(const metrics::HistogramFamily& h) {
  return {{"count", h.count()}, {"p50_s", h.quantile(0.5)}, {"p99_s", h.quantile(0.99)}};
}

json node_json(const DashboardSources& node) {
  const std::string self = node.agents.self();
  std::set<std::string> peers;
  for (const auto& [address, identity] : node.options.tls.peers) peers.insert(address);
  for (const AgentStatus& a : node.agents.dashboard_agents()) {
    for (const AgentHop& h : a.hops) peers.insert(h.node);
    if (!a.location.empty()) peers.insert(a.location);
    if (!a.home.empty()) peers.insert(a.home);
  }
  peers.erase(self);
  peers.erase("");
  const NodeCounters& c = node.counters;
  const NodeMetrics& m = c.metrics;
  return {{"name", node.options.name},
          {"address", self},
          {"uptime_s", uptime_seconds(c)},
          {"peers", std::vector<std::string>(peers.begin(), peers.end())},
          {"calls_served", c.calls_served.load()},
          {"evals_served", c.evals_served.load()},
          {"evals_inline", c.evals_inline.load()},
          {"requests_failed", c.requests_failed.load()},
          {"in_flight", node.runtime.in_flight()},
          {"agents_resident", node.agents.resident_count()},
          {"hops_in", m.hops.value({"in"})},
          {"hops_out", m.hops.value({"out"})},
          {"bytes_in", m.bytes.value({"in"})},
          {"bytes_out", m.bytes.value({"out"})},
          {"eval_latency", latency_json(m.eval_seconds)},
          {"step_latency", latency_json(m.step_seconds)},
          {"last_seq", c.trace.last_seq()}};
}

json trace_json(const NodeCounters& c, std::uint64_t since) {
  json events = json::array();
  for (const metrics::Event& e : c.trace.since(since)) {
    events.push_back({{"seq", e.seq}, {"unix_ms", e.unix_ms}, {"kind", e.kind}, {"agent", e.agent},
                      {"peer", e.peer}, {"detail", e.detail}});
  }
  return {{"last_seq", c.trace.last_seq()}, {"events", std::move(events)}};
}

HttpResponse json_response(const json& j, int status = 200) {
  return HttpResponse{status, "application/json", j.dump(-1, ' ', false, json::error_handler_t::replace)};
}

HttpResponse not_found(std::string_view what) {
  return json_response(json{{"error", "not found: " + std::string(what)}}, 404);
}

// The value of `key` in a query string ("since=12&x=y"); empty when absent.
std::string_view query_value(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    if (pair.size() > key.size() && pair.substr(0, key.size()) == key && pair[key.size()] == '=') {
      return pair.substr(key.size() + 1);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

}  // namespace

HttpResponse route_dashboard(const DashboardSources& node, std::string_view target) {
  const auto q = target.find('?');
  const std::string_view path = target.substr(0, q);
  const std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  if (path == "/" || path == "/index.html") return HttpResponse{200, "text/html; charset=utf-8", std::string(dashboard_page())};
  if (path == "/metrics") return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(node)};
  if (path == "/api/node") return json_response(node_json(node));
  if (path == "/api/agents") {
    json list = json::array();
    for (const AgentStatus& a : node.agents.dashboard_agents()) list.push_back(agent_json(a, false));
    return json_response(json{{"node", node.agents.self()}, {"agents", std::move(list)}});
  }
  constexpr std::string_view agent_prefix = "/api/agents/";
  if (path.substr(0, agent_prefix.size()) == agent_prefix) {
    const std::string_view id = path.substr(agent_prefix.size());
    for (const AgentStatus& a : node.agents.dashboard_agents()) {
      if (a.id == id) return json_response(agent_json(a, true));
    }
    return not_found("agent " + std::string(id));
  }
  if (path == "/api/trace") {
    const std::string_view text = query_value(query, "since");
    std::uint64_t since = 0;
    if (!text.empty()) {
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), since);
      if (ec != std::errc() || end != text.data() + text.size()) {
        return json_response(json{{"error", "since must be a sequence number"}}, 400);
      }
    }
    return json_response(trace_json(node.counters, since));
  }
  return not_found(path);
}

}  // namespace sojourn
