// Internal: what a node trusts: its TLS identity, its policy (the rule for a piece of code,
// the jail and the quotas that rule gives it), verified signatures and the replay guard.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "agents/node_jails.hpp"
#include "agents/trust.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/signature.hpp"

namespace sojourn {

class NodeTrust {
 public:
  NodeTrust(const NodeOptions& options, NodeJails& jails);
  NodeTrust(const NodeTrust&) = delete;
  NodeTrust& operator=(const NodeTrust&) = delete;

  // Made from options.tls at construction (null: plain TCP); when that failed, tls_error()
  // says why and listen() and calls to peers return it.
  const std::shared_ptr<const TlsContext>& tls() const { return tls_; }
  const std::optional<Error>& tls_error() const { return tls_error_; }
  // A caller proven (over TLS) to hold this node's own identity.
  bool is_self(const PeerIdentity& caller) const;
  // The node's stable id, what agent TRANSFERs and signed evaluations are addressed to:
  // its TLS key fingerprint with TLS; otherwise "node-" and 32 hex digits, kept in
  // options.data_dir/node-id when a data dir is given (else fresh per start).
  const std::string& node_id() const { return node_id_; }
  // Why options.data_dir could not give the id (listen() returns it), if it could not.
  const std::optional<Error>& id_error() const { return id_error_; }

  // The policy rule for code signed by `signer` (a key fingerprint, empty: unsigned) from
  // `peer` (its TLS identity, when authenticated); null without a policy.
  const PolicyRule* rule_for(std::string_view signer, const PeerIdentity& peer) const;
  // The level such code runs at: without a rule, the jails' peer_level(asked); with one, the
  // first of its levels that is at least `asked` and available here, else policy_refused.
  Result<Isolation> level_for(Isolation asked, const PolicyRule* rule);
  // The most one run may use: max_limits, lowered by the rule's quotas (and, for a run that
  // is a whole visit, such as one remote evaluation, by its per-hop CPU quota).
  Limits run_ceiling(const PolicyRule* rule, bool whole_visit = false) const;
  // "unsigned code" or "code signed by NAME", for messages.
  std::string describe_code(std::string_view signer) const;

  SignatureCache& signatures() { return signatures_; }  // bundles verified here, by (hash, signer)
  ReplayGuard& replay() { return replay_; }             // nonces of signed requests and transfers

 private:
  const NodeOptions& options_;
  NodeJails& jails_;
  std::shared_ptr<const TlsContext> tls_;
  std::optional<Error> tls_error_;
  std::string node_id_;
  std::optional<Error> id_error_;
  SignatureCache signatures_;
  ReplayGuard replay_;
};

// What the policy lets code call: service_not_granted "service NAME is not granted to this
// code by the node's policy", or the rate limiter's quota_exhausted. Ok without a rule.
Result<void> check_grant(const PolicyRule* rule, RateLimiter& rate, std::string_view service);

}  // namespace sojourn
