// Where a node runs code: the isolation level each run gets and the jails behind them.
#include "node_impl.hpp"

#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {
Error level_unavailable(Isolation level, const std::string& why) {
  return make_error(Errc::sandbox_refused, "refused by the sandbox: isolation level '" + std::string(isolation_name(level)) +
                                               "' is not available on this node" + (why.empty() ? "" : ": " + why));
}
}  // namespace

sandbox::ProcessJail* Node::Impl::process_jail() {
  std::call_once(jail_once, [this] {
    sandbox::ProcessJailOptions o;
    o.guest_path = options.guest_path;
    auto jail_started = sandbox::ProcessJail::start(o);
    if (!jail_started) {
      jail_error = jail_started.error().message;
      log_warn("node", options.name + ": no process jail: " + jail_error);
      return;
    }
    jail = std::move(*jail_started);
    const auto status = jail->status();
    log_info("node", options.name + ": process jail ready (guest " + status.guest_path + ", zygote " +
                         std::to_string(status.zygote_pid) + ", namespaces: " +
                         (status.namespaces.empty() ? "none" : status.namespaces) +
                         (status.namespace_fallback.empty() ? "" : "; " + status.namespace_fallback) + ")");
  });
  return jail.get();
}

Result<Isolation> Node::Impl::peer_level(Isolation asked) {
  const Isolation level = std::max(asked, options.peer_isolation);
  if (level == Isolation::microvm) return level_unavailable(level, "there is no microVM jail yet");
  if (level == Isolation::process && process_jail() == nullptr) return level_unavailable(level, jail_error);
  return level;
}

Result<Value> Node::Impl::run_chunk(Isolation level, const sandbox::RunInput& input, sandbox::HostCalls* host) {
  if (level == Isolation::trusted) return sandbox::run_lua(input, host);
  sandbox::ProcessJail* j = level == Isolation::process ? process_jail() : nullptr;
  if (j == nullptr) return level_unavailable(level, level == Isolation::process ? jail_error : "");
  return j->run(input, host);
}

Result<sandbox::AgentOutcome> Node::Impl::run_agent_step(Isolation level, const sandbox::RunInput& input,
                                                         const sandbox::AgentInput& agent, sandbox::HostCalls* host) {
  if (level == Isolation::trusted) return sandbox::run_agent(input, agent, host);
  sandbox::ProcessJail* j = level == Isolation::process ? process_jail() : nullptr;
  if (j == nullptr) return level_unavailable(level, level == Isolation::process ? jail_error : "");
  return j->run_agent(input, agent, host);
}

std::vector<Isolation> Node::isolation_levels(std::string* why) {
  std::vector<Isolation> levels{Isolation::trusted};
  if (impl_->process_jail() != nullptr) levels.push_back(Isolation::process);
  std::string reasons = impl_->jail == nullptr ? "process: " + impl_->jail_error + "; " : "";
  reasons += "microvm: there is no microVM jail yet";
  if (why != nullptr) *why = reasons;
  return levels;
}

}  // namespace sojourn
