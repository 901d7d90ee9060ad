// Quotas that travel: what an arriving agent is allowed here (signature, signed ceilings,
// policy), the limits of each of its steps, and charging what a step spent.
#include "agents/agent_runtime.hpp"

#include <algorithm>

namespace sojourn {

namespace {

// A claim above the manifest's figure: a node on the way tried to raise the agent's quota.
Error raised(const AgentRecord& r, const std::string& what, std::uint64_t claimed, std::uint64_t ceiling) {
  return make_error(Errc::quota_raised, "agent " + r.id + " claims " + what + " of " + std::to_string(claimed) +
                                            ", above the " + std::to_string(ceiling) +
                                            (r.signer.empty() ? " its manifest sets" : " its owner signed"));
}

}  // namespace

Result<const PolicyRule*> AgentRuntime::admit_code(AgentRecord& record, const CachedBundle& bundle,
                                                   const PeerIdentity& peer) {
  const BundleManifest& m = bundle.bundle.manifest;
  std::string signer;
  if (!record.signer.empty() || !record.signature.empty()) {
    BundleSignature s{record.signer, record.signature};
    if (auto good = trust_.signatures().verify(s, bundle.hash, m); !good) return good.error();
    signer = key_fingerprint(record.signer);
  }
  // The manifest is the ceiling of every quota the record carries: a node on the way may
  // lower them, never raise them.
  if (m.max_hops != 0 && record.max_hops > m.max_hops) return raised(record, "a hop budget", record.max_hops, m.max_hops);
  if (m.cpu_budget != 0) {
    if (!record.cpu_left) return raised(record, "an unlimited CPU budget instead", 0, m.cpu_budget);
    if (*record.cpu_left > m.cpu_budget) return raised(record, "a CPU budget", *record.cpu_left, m.cpu_budget);
  }
  // The mobility is signed with the quotas: a strong bundle's agent is strong everywhere, and a
  // signed weak bundle's agent stays weak (an unsigned launch may still ask for strong).
  const Mobility asked = m.mobility == "strong" ? Mobility::strong : Mobility::weak;
  if (record.mobility != asked && (asked == Mobility::strong || !record.signer.empty())) {
    return make_error(Errc::quota_raised, "agent " + record.id + " claims " + std::string(mobility_name(record.mobility)) +
                                              " mobility, not the " + m.mobility + " mobility " +
                                              (record.signer.empty() ? "its manifest sets" : "its owner signed"));
  }
  const Limits& q = m.quotas;
  if (q.cpu_instructions != 0 && record.quotas.cpu_instructions > q.cpu_instructions) {
    return raised(record, "a CPU quota per run", record.quotas.cpu_instructions, q.cpu_instructions);
  }
  if (q.memory_bytes != 0 && record.quotas.memory_bytes > q.memory_bytes) {
    return raised(record, "a memory quota", record.quotas.memory_bytes, q.memory_bytes);
  }
  if (q.wall_ms != 0 && record.quotas.wall_ms > q.wall_ms) {
    return raised(record, "a wall-clock quota", record.quotas.wall_ms, q.wall_ms);
  }
  const PolicyRule* rule = trust_.rule_for(signer, peer);
  if (rule == nullptr) return rule;
  if (rule->refuse) return policy_refusal(*rule, trust_.describe_code(signer));
  if (record.mobility == Mobility::strong && !rule->allow_strong) {
    return policy_refusal(*rule, "strong agents of " + trust_.describe_code(signer));
  }
  if (rule->quotas.max_hops != 0) {
    if (record.epoch > rule->quotas.max_hops) {
      return make_error(Errc::policy_refused, "refused by the node's policy: agent " + record.id + " has made " +
                                                  std::to_string(record.epoch) + " hops, rule " + rule->name + " allows " +
                                                  std::to_string(rule->quotas.max_hops));
    }
    record.max_hops = std::min(record.max_hops, rule->quotas.max_hops);
  }
  if (rule->quotas.max_state_bytes != 0) {
    const std::size_t state_bytes = encode_value(record.state).size();
    if (state_bytes > rule->quotas.max_state_bytes) {
      return make_error(Errc::policy_refused, "refused by the node's policy: agent " + record.id + "'s state of " +
                                                  std::to_string(state_bytes) + " bytes is over the " +
                                                  std::to_string(rule->quotas.max_state_bytes) + " bytes rule " +
                                                  rule->name + " allows");
    }
  }
  return rule;
}

AgentRuntime::StepBudget AgentRuntime::step_budget(const AgentRecord& record, const CachedBundle& bundle,
                                                   const PolicyRule* rule, std::uint64_t hop_spent) {
  StepBudget b;
  // min(signed per-run quota, policy, node): the manifest asks, the node's ceiling clamps.
  b.limits = effective_limits(bundle.bundle.manifest.quotas, options_.default_limits, trust_.run_ceiling(rule));
  if (rule != nullptr && rule->quotas.cpu_per_hop != 0) {
    const std::uint64_t hop_left = rule->quotas.cpu_per_hop > hop_spent ? rule->quotas.cpu_per_hop - hop_spent : 0;
    if (hop_left == 0) {
      b.exhausted = out_of_budget(record, bundle, StepBudget::Bound::hop, rule);
      return b;
    }
    if (hop_left < b.limits.cpu_instructions) {
      b.limits.cpu_instructions = hop_left;
      b.bound = StepBudget::Bound::hop;
    }
  }
  if (record.cpu_left) {
    if (*record.cpu_left == 0) {
      b.exhausted = out_of_budget(record, bundle, StepBudget::Bound::total, rule);
      return b;
    }
    if (*record.cpu_left < b.limits.cpu_instructions) {
      b.limits.cpu_instructions = *record.cpu_left;
      b.bound = StepBudget::Bound::total;
    }
  }
  return b;
}

std::uint64_t AgentRuntime::charged_instructions(const sandbox::AgentOutcome& outcome) const {
  const std::uint64_t per_ms = options_.instructions_per_cpu_ms;
  const std::uint64_t measured = outcome.host_cpu_us / 1000 * per_ms + outcome.host_cpu_us % 1000 * per_ms / 1000;
  return std::max(outcome.instructions, measured);
}

void AgentRuntime::charge(Resident& resident, std::uint64_t instructions) {
  resident.hop_cpu_spent += instructions;
  auto& left = resident.record.cpu_left;
  if (left) *left = *left > instructions ? *left - instructions : 0;
}

std::string AgentRuntime::out_of_budget(const AgentRecord& record, const CachedBundle& bundle, StepBudget::Bound bound,
                                        const PolicyRule* rule) {
  const std::string agent = "agent " + record.id + " ran out of its ";
  if (bound == StepBudget::Bound::hop && rule != nullptr) {
    return agent + "CPU budget of " + std::to_string(rule->quotas.cpu_per_hop) + " instructions for one visit at " +
           self() + " (policy rule " + rule->name + ")";
  }
  return agent + "CPU budget of " + std::to_string(bundle.bundle.manifest.cpu_budget) + " instructions (at " + self() + ")";
}

}  // namespace sojourn
