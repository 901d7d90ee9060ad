// Where a node runs code: the isolation level each run gets, and the node's JailSet behind it.
#include "agents/node_impl.hpp"

#include "sojourn/core/log.hpp"

namespace sojourn {

sandbox::JailConfig node_jail_config(const NodeOptions& options) {
  sandbox::JailConfig c;
  c.guest_path = options.guest_path;
  c.max_memory_bytes = options.max_limits.memory_bytes;
  c.owner = options.name;
  c.wanted = options.peer_isolation;
  return c;
}

Isolation Node::Impl::node_peer_level() {
  std::call_once(peer_level_once, [this] {
    if (options.peer_isolation) {
      resolved_peer_level = *options.peer_isolation;
      return;
    }
    resolved_peer_level = jails.strongest(Isolation::process);
    log_info("node", options.name + ": code from peers runs at '" + std::string(isolation_name(resolved_peer_level)) +
                         "' (the strongest level here)");
  });
  return resolved_peer_level;
}

Result<Isolation> Node::Impl::peer_level(Isolation asked) {
  const Isolation level = std::max(asked, node_peer_level());
  if (Result<sandbox::Jail*> jail = jails.get(level); !jail) return jail.error();
  return level;
}

Result<Value> Node::Impl::run_chunk(Isolation level, const sandbox::RunInput& input, sandbox::HostCalls* host) {
  return jails.run(level, input, host);
}

Result<sandbox::AgentOutcome> Node::Impl::run_agent_step(Isolation level, const sandbox::RunInput& input,
                                                         const sandbox::AgentInput& agent, sandbox::HostCalls* host) {
  return jails.run_agent(level, input, agent, host);
}

std::vector<Isolation> Node::isolation_levels(std::string* why) { return impl_->jails.available(why); }

Isolation Node::peer_isolation() { return impl_->node_peer_level(); }

}  // namespace sojourn
