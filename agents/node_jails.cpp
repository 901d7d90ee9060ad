// Where a node runs code: the isolation level each run gets, and the node's JailSet behind it.
#include "agents/node_jails.hpp"

#include <algorithm>

#include "sandbox/image/heap_image.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace sojourn {

namespace {
// What the node's jails start with: its guest binary, room for its largest run, its name.
sandbox::JailConfig jail_config(const NodeOptions& options) {
  sandbox::JailConfig c;
  c.guest_path = options.guest_path;
  c.max_memory_bytes = options.max_limits.memory_bytes;
  c.owner = options.name;
  c.wanted = options.peer_isolation;
  c.warm_guests = options.warm_guests;
  return c;
}
}  // namespace

NodeJails::NodeJails(const NodeOptions& options) : options_(options), jails_(jail_config(options)) {}

Isolation NodeJails::node_peer_level() {
  std::call_once(peer_level_once_, [this] {
    if (options_.peer_isolation) {
      resolved_peer_level_ = *options_.peer_isolation;
      peer_level_known_.store(true, std::memory_order_release);
      return;
    }
    resolved_peer_level_ = jails_.strongest(Isolation::process);
    log_info("node", options_.name + ": code from peers runs at '" + std::string(isolation_name(resolved_peer_level_)) +
                         "' (the strongest level here)");
    peer_level_known_.store(true, std::memory_order_release);
  });
  return resolved_peer_level_;
}

Result<Isolation> NodeJails::peer_level(Isolation asked) {
  const Isolation level = std::max(asked, node_peer_level());
  if (Result<sandbox::Jail*> jail = jails_.get(level); !jail) return jail.error();
  return level;
}

IsolationLevels NodeJails::levels() {
  IsolationLevels out;
  for (Isolation level : sandbox::JailSet::levels()) {
    if (const std::string* why = jails_.unavailable(level)) {
      out.missing.emplace_back(level, *why);
    } else {
      out.available.push_back(level);
    }
  }
  return out;
}

std::vector<Isolation> NodeJails::started_levels() const {
  std::vector<Isolation> out;
  for (Isolation level : sandbox::JailSet::levels()) {
    if (jails_.started(level) != nullptr) out.push_back(level);
  }
  return out;
}

std::optional<Isolation> NodeJails::known_peer_level() const {
  if (!peer_level_known_.load(std::memory_order_acquire)) return std::nullopt;
  return resolved_peer_level_;
}

std::optional<Result<Value>> NodeJails::run_chunk_if_warm(const sandbox::RunInput& input, sandbox::HostCalls* host,
                                                          std::uint32_t kill_grace_ms) {
  auto* process = dynamic_cast<sandbox::ProcessJail*>(jails_.started(Isolation::process));
  if (process == nullptr) return std::nullopt;
  return process->run_if_warm(input, host, kill_grace_ms);
}

Result<Value> NodeJails::run_chunk(Isolation level, const sandbox::RunInput& input, sandbox::HostCalls* host) {
  return jails_.run(level, input, host);
}

std::vector<Result<Value>> NodeJails::run_chunk_burst(Isolation level, std::span<const sandbox::RunInput* const> inputs,
                                                      std::span<sandbox::HostCalls* const> hosts) {
  if (level == Isolation::process && inputs.size() > 1) {
    Result<sandbox::Jail*> jail = jails_.get(level);
    if (auto* process = jail ? dynamic_cast<sandbox::ProcessJail*>(*jail) : nullptr) return process->run_burst(inputs, hosts);
  }
  std::vector<Result<Value>> results;
  results.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) results.push_back(run_chunk(level, *inputs[i], hosts[i]));
  return results;
}

Result<sandbox::AgentOutcome> NodeJails::run_agent_step(Isolation level, const sandbox::RunInput& input,
                                                        const sandbox::AgentInput& agent, sandbox::HostCalls* host) {
  return jails_.run_agent(level, input, agent, host);
}

Result<sandbox::StrongOutcome> NodeJails::run_strong_step(Isolation level, const sandbox::RunInput& input,
                                                          const sandbox::AgentInput& agent, sandbox::HostCalls* host) {
  Result<sandbox::Jail*> jail = jails_.get(level);
  if (!jail) return jail.error();
  return (*jail)->run_strong(input, agent, host);
}

Result<sandbox::StrongOutcome> NodeJails::resume_strong_step(Isolation level, std::span<const std::uint8_t> image,
                                                             const sandbox::RunInput& input, const Value& info,
                                                             sandbox::HostCalls* host,
                                                             const std::array<std::uint8_t, 32>* hashed) {
  Result<sandbox::Jail*> jail = jails_.get(level);
  if (!jail) return jail.error();
  return (*jail)->resume_strong(image, input, info, host, hashed);
}

Result<std::array<std::uint8_t, 32>> NodeJails::guest_build() {
  std::call_once(build_once_, [this] {
    Result<std::string> path = sandbox::find_guest_binary(options_.guest_path);
    if (!path) {
      build_.emplace(path.error());
      return;
    }
    build_.emplace(sandbox::image::guest_build_id(*path));  // hashed once per process, shared with the jails
  });
  return *build_;
}

std::uint64_t NodeJails::warm_guest_reuses() const {
  auto* process = dynamic_cast<sandbox::ProcessJail*>(jails_.started(Isolation::process));
  return process != nullptr ? process->status().guests_reused : 0;
}

}  // namespace sojourn
