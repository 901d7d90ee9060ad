// Where an agent may go from this node: the policy rule's `destinations`, else the node's
// default (the peers it knows; over plain TCP also loopback), and the fixed texts code hears.
#include "agents/destinations.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <vector>

#include "sojourn/transports/address.hpp"

namespace sojourn {

namespace {

// The address as links name it ("HOST:PORT" normalised); empty when it does not parse.
std::string normalised(std::string_view text) {
  auto a = parse_address(text);
  return a ? a->to_string() : std::string();
}

bool is_loopback(const Address& a) {
  if (a.kind == Address::Kind::inproc) return true;  // the same process
  if (a.host == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, a.host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, a.host.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

bool is_configured_peer(const DestinationScope& scope, const std::string& where) {
  if (scope.peers == nullptr) return false;
  return std::any_of(scope.peers->begin(), scope.peers->end(),
                     [&](const auto& entry) { return normalised(entry.first) == where; });
}

// Configured peers, the agent's home, the stops its owner gave it and the nodes it visited.
bool is_known(const DestinationScope& scope, const std::string& where) {
  if (is_configured_peer(scope, where)) return true;
  if (scope.record == nullptr) return false;
  const AgentRecord& r = *scope.record;
  if (normalised(r.home) == where) return true;
  for (const auto& stop : r.itinerary) {
    if (normalised(stop) == where) return true;
  }
  for (const auto& hop : r.hops) {
    if (normalised(hop.node) == where) return true;
  }
  for (const auto& node : r.visited) {  // the nodes of hops its home holds now
    if (normalised(node) == where) return true;
  }
  return false;
}

bool pattern_matches(const DestinationScope& scope, const std::string& pattern, const Address& a,
                     const std::string& where) {
  if (pattern == "*") return true;
  if (pattern == "known") return is_known(scope, where);
  if (pattern == "peers") return is_configured_peer(scope, where);
  if (pattern.size() > 2 && pattern.compare(pattern.size() - 2, 2, ":*") == 0) {
    auto host = parse_address(pattern.substr(0, pattern.size() - 1) + "0");
    return host && a.kind == Address::Kind::tcp && host->host == a.host;
  }
  return normalised(pattern) == where;
}

}  // namespace

Result<void> check_destination(const DestinationScope& scope, std::string_view destination) {
  const std::string id = scope.record != nullptr ? scope.record->id : std::string("?");
  auto refused = [&](const std::string& why) {
    return make_error(Errc::policy_refused, "agent " + id + " may not go to " + std::string(destination) + ": " + why);
  };
  auto address = parse_address(destination);
  if (!address) return refused(address.error().message);
  const std::string where = address->to_string();
  if (scope.rule != nullptr && scope.rule->destinations) {
    for (const auto& pattern : *scope.rule->destinations) {
      if (pattern_matches(scope, pattern, *address, where)) return {};
    }
    return refused("not among the destinations of policy rule " + scope.rule->name);
  }
  if (is_known(scope, where)) return {};
  if (!scope.tls && is_loopback(*address)) return {};
  return refused(scope.tls ? "not a peer this node knows (configure it with --peer NAME=HOST:PORT, or list it in the "
                             "policy rule's destinations)"
                           : "plain TCP sends agents only to loopback addresses and to peers this node knows");
}

std::string hand_over_failure_for_code(const Error& error) {
  switch (error.code) {
    case Errc::connect_failed:
    case Errc::connection_closed:
    case Errc::timeout:
    case Errc::remote_protocol_error:
    case Errc::tls_handshake_failed:
    case Errc::untrusted_peer:
    case Errc::refused_by_peer:
    case Errc::bad_address:
    case Errc::tls_config:
    case Errc::insecure_transport:
    case Errc::frame_too_large:
      return kDestinationUnreachable;
    default:
      return error.message;
  }
}

}  // namespace sojourn
