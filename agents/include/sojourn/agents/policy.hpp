// A node's policy: which code (by its signer) from which peer (by its authenticated
// identity) may run here, in which jails, with which quotas and which local services.
// The file format (JSON) is documented in docs/security.md; samples/policy.json is an example.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"

namespace sojourn {

// Upper bounds a rule sets; zero means "this rule sets no bound" (the node's own limits apply).
struct PolicyQuotas {
  std::uint64_t cpu_per_run = 0;          // Lua instructions of one run (an eval, one agent step)
  std::uint64_t cpu_per_hop = 0;          // Lua instructions an agent may spend on one visit here
  std::uint64_t memory_bytes = 0;         // of one run
  std::uint32_t wall_ms = 0;              // of one run
  std::uint32_t max_hops = 0;             // an agent's hop count, all hops together
  std::uint64_t max_state_bytes = 0;      // an agent's encoded state
  std::uint32_t messages_per_second = 0;  // node.call from the code (per run or per agent visit)

  friend bool operator==(const PolicyQuotas&, const PolicyQuotas&) = default;
};

struct PolicyRule {
  std::string name;              // for messages and logs ("rules[2]" when the file gives none)
  std::optional<std::string> signer;  // a key name, a fingerprint or "*" (any valid signature)
  std::optional<std::string> peer;    // a peer identity or "*" (any authenticated peer)
  bool refuse = false;           // matching code is refused
  // Strong agents (their heap image travels) may run here; false ("strong": false): they are
  // refused, at launch and at a hand-over, while this code's weak agents are not.
  bool allow_strong = true;
  // Levels this code may run at, in order of preference; the first one that is at least
  // what the request asked for and is available on the node is used.
  std::vector<Isolation> isolation{Isolation::process};
  PolicyQuotas quotas;
  // Services `node.call` may reach: names, "prefix.*", or "*". Absent: all of them.
  std::optional<std::vector<std::string>> services;
  // Where this code's agents may be sent from this node (agent.go, and the itinerary and
  // home it falls back to): "HOST:PORT", "HOST:*" (any port of HOST), "peers" (the node's
  // configured peers, TlsConfig::peers), "known" (those, the agent's home, its itinerary and
  // the nodes it has visited) or "*". Absent: the node's default (docs/security.md).
  std::optional<std::vector<std::string>> destinations;

  bool grants(std::string_view service) const;
};

class Policy {
 public:
  // Parses the JSON text; key files named in "keys" are read relative to `base_dir`.
  // bad_policy "bad policy: WHERE: ..." (e.g. "bad policy: rules[1].isolation: unknown level 'vm'").
  static Result<Policy> parse(std::string_view json, const std::string& base_dir = ".");
  // From a file: bad_policy "bad policy: cannot read PATH", or parse's errors.
  static Result<Policy> load(const std::string& path);

  // The first rule whose conditions hold, else the default rule. `signer` is the hex
  // fingerprint of the key that signed the code (empty: unsigned, or the signature failed);
  // `peer_name` and `peer_fingerprint` are the peer's TLS identity (its certificate's CN
  // and key fingerprint; both empty: not authenticated, e.g. plain TCP). A rule's `peer`
  // names either.
  const PolicyRule& match(std::string_view signer, std::string_view peer_name, std::string_view peer_fingerprint = {}) const;

  // A signer's key name in the policy, or the first 16 digits of its fingerprint.
  std::string signer_name(std::string_view fingerprint) const;

  const std::vector<PolicyRule>& rules() const { return rules_; }
  const PolicyRule& default_rule() const { return default_; }

 private:
  bool signer_matches(const std::string& wanted, std::string_view signer) const;

  std::map<std::string, std::string> keys_;  // name -> fingerprint
  std::vector<PolicyRule> rules_;
  PolicyRule default_;
};

// The refusal of a rule: policy_refused "refused by the node's policy: rule NAME refuses
// WHAT" (WHAT e.g. "unsigned code" or "code signed by alice").
Error policy_refusal(const PolicyRule& rule, const std::string& what);

}  // namespace sojourn
