// What the node's policy decides for one piece of code: its rule, its jail, its quotas
// and the services it may call.
#include "agents/node_trust.hpp"

#include "sojourn/core/log.hpp"

namespace sojourn {

NodeTrust::NodeTrust(const NodeOptions& options, NodeJails& jails)
    : options_(options), jails_(jails), replay_(options_.max_message_lifetime, options_.expiry_clock) {
  if (!options_.tls.enabled()) return;
  auto context = make_tls_context(options_.tls);
  if (context) {
    tls_ = std::move(*context);
  } else {
    tls_error_ = context.error();
    log_error("node", options_.name + ": " + context.error().message);
  }
}

bool NodeTrust::is_self(const PeerIdentity& caller) const {
  return tls_ && caller.authenticated() && caller.fingerprint == tls_local_identity(*tls_).fingerprint;
}

const PolicyRule* NodeTrust::rule_for(std::string_view signer, const PeerIdentity& peer) const {
  if (!options_.policy) return nullptr;
  if (!peer.authenticated()) return &options_.policy->match(signer, {}, {});
  return &options_.policy->match(signer, peer.name, peer.fingerprint);
}

std::string NodeTrust::describe_code(std::string_view signer) const {
  if (signer.empty()) return "unsigned code";
  return "code signed by " + (options_.policy ? options_.policy->signer_name(signer) : std::string(signer.substr(0, 16)));
}

Result<Isolation> NodeTrust::level_for(Isolation asked, const PolicyRule* rule) {
  if (rule == nullptr) return jails_.peer_level(asked);
  std::string allowed, why;
  for (Isolation level : rule->isolation) {
    allowed += (allowed.empty() ? "" : ", ") + std::string(isolation_name(level));
    if (level < asked) continue;
    if (const std::string* missing = jails_.unavailable(level)) {
      why += "; " + std::string(isolation_name(level)) + ": " + *missing;
      continue;
    }
    return level;
  }
  return make_error(Errc::policy_refused, "refused by the node's policy: rule " + rule->name + " allows isolation " +
                                              allowed + ", and none at least '" + std::string(isolation_name(asked)) +
                                              "' is available here" + why);
}

Limits NodeTrust::run_ceiling(const PolicyRule* rule, bool whole_visit) const {
  Limits c = options_.max_limits;
  if (rule == nullptr) return c;
  auto lower = [](auto& field, auto bound) {
    if (bound != 0 && (field == 0 || bound < field)) field = static_cast<std::remove_reference_t<decltype(field)>>(bound);
  };
  lower(c.cpu_instructions, rule->quotas.cpu_per_run);
  lower(c.memory_bytes, rule->quotas.memory_bytes);
  lower(c.wall_ms, rule->quotas.wall_ms);
  if (whole_visit) lower(c.cpu_instructions, rule->quotas.cpu_per_hop);
  return c;
}

Result<void> check_grant(const PolicyRule* rule, RateLimiter& rate, std::string_view service) {
  if (rule == nullptr) return {};
  if (!rule->grants(service)) {
    return make_error(Errc::service_not_granted,
                      "service " + std::string(service) + " is not granted to this code by the node's policy");
  }
  return rate.take(rule->name);
}

}  // namespace sojourn
