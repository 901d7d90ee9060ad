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

sandbox::MicrovmJail* Node::Impl::microvm_jail() {
  std::call_once(microvm_once, [this] {
    sandbox::MicrovmJailOptions o;
    o.guest_path = options.guest_path;
    // Room for the largest Lua heap a request may ask for.
    o.memory_bytes = std::max(o.memory_bytes, options.max_limits.memory_bytes + sandbox::kGuestOverheadBytes);
    auto made = sandbox::MicrovmJail::start(o);
    if (!made) {
      microvm_error = made.error().message;
      // Expected on most machines (no /dev/kvm): a fact, not a warning, unless asked for.
      if (options.peer_isolation == Isolation::microvm) {
        log_warn("node", options.name + ": no microVM jail: " + microvm_error);
      } else {
        log_info("node", options.name + ": no microVM jail: " + microvm_error);
      }
      return;
    }
    microvm = std::move(*made);
    const auto status = microvm->status();
    log_info("node", options.name + ": microVM jail ready (guest " + status.guest_path + ", master booted in " +
                         std::to_string(static_cast<int>(status.master_boot_ms)) + " ms, " +
                         std::to_string(status.pooled) + " VMs pooled)");
  });
  return microvm.get();
}

Isolation Node::Impl::node_peer_level() {
  std::call_once(peer_level_once, [this] {
    if (options.peer_isolation) {
      resolved_peer_level = *options.peer_isolation;
      return;
    }
    resolved_peer_level = microvm_jail() != nullptr ? Isolation::microvm : Isolation::process;
    log_info("node", options.name + ": code from peers runs at '" + std::string(isolation_name(resolved_peer_level)) +
                         "' (the strongest level here)");
  });
  return resolved_peer_level;
}

const std::string* Node::Impl::unavailable(Isolation level) {
  if (level == Isolation::microvm && microvm_jail() == nullptr) return &microvm_error;
  if (level == Isolation::process && process_jail() == nullptr) return &jail_error;
  return nullptr;
}

Result<Isolation> Node::Impl::peer_level(Isolation asked) {
  const Isolation level = std::max(asked, node_peer_level());
  if (const std::string* why = unavailable(level)) return level_unavailable(level, *why);
  return level;
}

Result<Value> Node::Impl::run_chunk(Isolation level, const sandbox::RunInput& input, sandbox::HostCalls* host) {
  if (const std::string* why = unavailable(level)) return level_unavailable(level, *why);
  switch (level) {
    case Isolation::trusted: return sandbox::run_lua(input, host);
    case Isolation::process: return jail->run(input, host);
    case Isolation::microvm: return microvm->run(input, host);
  }
  return level_unavailable(level, "unknown level");
}

Result<sandbox::AgentOutcome> Node::Impl::run_agent_step(Isolation level, const sandbox::RunInput& input,
                                                         const sandbox::AgentInput& agent, sandbox::HostCalls* host) {
  if (const std::string* why = unavailable(level)) return level_unavailable(level, *why);
  switch (level) {
    case Isolation::trusted: return sandbox::run_agent(input, agent, host);
    case Isolation::process: return jail->run_agent(input, agent, host);
    case Isolation::microvm: return microvm->run_agent(input, agent, host);
  }
  return level_unavailable(level, "unknown level");
}

std::vector<Isolation> Node::isolation_levels(std::string* why) {
  std::vector<Isolation> levels{Isolation::trusted};
  std::string reasons;
  if (impl_->process_jail() != nullptr) {
    levels.push_back(Isolation::process);
  } else {
    reasons += "process: " + impl_->jail_error;
  }
  if (impl_->microvm_jail() != nullptr) {
    levels.push_back(Isolation::microvm);
  } else {
    reasons += (reasons.empty() ? "" : "; ") + std::string("microvm: ") + impl_->microvm_error;
  }
  if (why != nullptr) *why = reasons;
  return levels;
}

Isolation Node::peer_isolation() { return impl_->node_peer_level(); }

}  // namespace sojourn
