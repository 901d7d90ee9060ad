// Resident agents seen from outside: the list a client asks for, the dashboard's view, and
// the counts and sizes the metrics report (the runtime itself is agent_runtime.cpp).
#include "agents/agent_runtime.hpp"

namespace sojourn {

std::uint64_t AgentRuntime::resident_count() {
  std::lock_guard lock(mutex_);
  return residents_.size();
}

std::string AgentRuntime::viewer_of(const PeerIdentity& caller) {
  if (caller.address == "local") return "local";
  return caller.authenticated() ? "tls:" + caller.fingerprint : std::string();
}

bool AgentRuntime::sees_all(const PeerIdentity& caller) const {
  if (caller.address == "local") return true;
  return trust_.is_self(caller);
}

Result<std::vector<AgentSummary>> AgentRuntime::list(const PeerIdentity& caller) {
  std::vector<AgentSummary> out;
  const bool all = sees_all(caller);
  const std::string viewer = viewer_of(caller);
  std::lock_guard lock(mutex_);
  for (const auto& [id, res] : residents_) {
    if (!all && res.record.launcher != viewer) continue;
    AgentSummary a;
    a.id = id;
    a.owner = res.record.owner;
    a.home = res.record.home;
    a.epoch = res.record.epoch;
    a.since_unix_ms = res.since_unix_ms;
    a.state_bytes = encode_value(res.record.state).size();
    a.status = res.status;
    a.reason = res.reason;
    a.isolation = std::string(isolation_name(res.record.isolation));
    a.mobility = std::string(mobility_name(res.record.mobility));
    a.image_bytes = res.record.image ? res.record.image->size() : 0;
    out.push_back(std::move(a));
  }
  return out;
}

// The dashboard's view (agents/http): every resident agent from its record, then every agent
// whose home is here and that is elsewhere or ended, from what its reports said.
std::vector<AgentStatus> AgentRuntime::dashboard_agents() {
  std::vector<AgentStatus> out;
  const std::string here = self();
  std::lock_guard lock(mutex_);
  for (const auto& [id, res] : residents_) {
    AgentStatus a;
    a.id = id;
    a.home = res.record.home;
    a.owner = res.record.owner;
    a.location = here;
    a.epoch = res.record.epoch;
    a.status = res.status;
    a.reason = res.reason;
    a.hops = res.record.hops;
    // At its home, the whole itinerary: what the reports said, and the record's last hops.
    if (auto t = tracked_.find(id); t != tracked_.end()) {
      a.hops = t->second.status.hops;
      merge_hops(a.hops, res.record.hops, res.record.epoch);
    }
    a.log = res.record.log;
    a.pending_messages = res.record.mailbox.size();
    out.push_back(std::move(a));
  }
  for (const auto& [id, t] : tracked_) {
    if (residents_.count(id) != 0) continue;
    out.push_back(t.status);
  }
  return out;
}

std::uint64_t AgentRuntime::resident_image_bytes() {
  std::uint64_t total = 0;
  std::lock_guard lock(mutex_);
  for (const auto& [id, res] : residents_) total += res.record.image ? res.record.image->size() : 0;
  return total;
}

std::uint64_t AgentRuntime::resident_state_bytes() {
  std::uint64_t total = 0;
  std::lock_guard lock(mutex_);
  for (const auto& [id, res] : residents_) total += encode_value(res.record.state).size();
  return total;
}

}  // namespace sojourn
