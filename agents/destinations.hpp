// Internal: where this node may send an agent (agent.go, and the itinerary stop and home a
// hand-over falls back to), and what code hears when a hand-over fails. The rules are in
// docs/security.md ("Where agents may go").
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "agents/agent_record.hpp"
#include "sojourn/agents/policy.hpp"

namespace sojourn {

// What a destination is checked against.
struct DestinationScope {
  const PolicyRule* rule = nullptr;  // the agent's rule here; null: no policy
  bool tls = false;                  // this node speaks (only) mutual TLS
  const std::map<std::string, std::string>* peers = nullptr;  // configured peers: address -> identity
  const AgentRecord* record = nullptr;  // home, itinerary, visited nodes
};

// Ok when the agent may be sent to `destination`; otherwise policy_refused with the full
// reason, for the node's log only: "agent ID may not go to DEST: ...".
Result<void> check_destination(const DestinationScope& scope, std::string_view destination);

// What code (through the agent's status at its home) hears of a hand-over that failed: the
// fixed texts below for every refusal by policy and every failure to reach or authenticate
// the destination, so that no OS error, port state or TLS detail leaks; a sojourn node's
// own answer (its policy, a stale epoch) is passed on.
inline constexpr const char* kDestinationRefused = "destination refused by policy";
inline constexpr const char* kDestinationUnreachable = "destination unreachable";
std::string hand_over_failure_for_code(const Error& error);

}  // namespace sojourn
