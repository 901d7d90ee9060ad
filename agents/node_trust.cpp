// What the node's policy decides for one piece of code: its rule, its jail, its quotas
// and the services it may call.
#include "agents/node_trust.hpp"

#include <filesystem>
#include <fstream>

#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {

bool is_node_id(std::string_view id) {
  constexpr std::string_view prefix = "node-";
  if (id.size() != prefix.size() + 32 || id.substr(0, prefix.size()) != prefix) return false;
  for (char c : id.substr(prefix.size())) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// The id kept in DIR/node-id, made there at first start.
Result<std::string> stored_node_id(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path file = fs::path(dir) / "node-id";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return errors::invalid_argument("cannot create the data dir " + dir + ": " + ec.message());
  if (fs::exists(file, ec)) {
    std::ifstream in(file);
    std::string id;
    std::getline(in, id);
    if (!is_node_id(id)) return errors::invalid_argument(file.string() + " does not hold a node id (node- and 32 hex digits)");
    return id;
  }
  const std::string id = "node-" + random_nonce().substr(0, 32);
  // Written beside and renamed into place: a crash never leaves half an id behind.
  const fs::path tmp = fs::path(dir) / "node-id.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << id << "\n";
    if (!out.flush()) return errors::invalid_argument("cannot write " + tmp.string());
  }
  fs::rename(tmp, file, ec);
  if (ec) return errors::invalid_argument("cannot write " + file.string() + ": " + ec.message());
  return id;
}

}  // namespace

NodeTrust::NodeTrust(const NodeOptions& options, NodeJails& jails)
    : options_(options), jails_(jails), replay_(options_.max_message_lifetime, options_.expiry_clock) {
  if (options_.tls.enabled()) {
    auto context = make_tls_context(options_.tls);
    if (context) {
      tls_ = std::move(*context);
    } else {
      tls_error_ = context.error();
      log_error("node", options_.name + ": " + context.error().message);
    }
  }
  if (tls_) {
    node_id_ = tls_local_identity(*tls_).fingerprint;  // what a TLS handshake proves
  } else if (!options_.data_dir.empty()) {
    auto id = stored_node_id(options_.data_dir);
    if (id) {
      node_id_ = std::move(*id);
    } else {
      id_error_ = id.error();
      log_error("node", options_.name + ": " + id.error().message);
    }
  }
  if (node_id_.empty()) node_id_ = "node-" + random_nonce().substr(0, 32);
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
