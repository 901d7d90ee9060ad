// Internal: what Lua code run by a node reaches through its host calls (node.call and
// require_remote), within what the node's policy grants it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "sojourn/agents/policy.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "agents/trust.hpp"

namespace sojourn {

class ServiceRegistry;
struct CachedBundle;

// Where `require_remote` finds a module's source: in `bundle` (if any), this node, then
// `origin` (if any). The agent runtime, which holds the code cache.
class ModuleSource {
 public:
  virtual ~ModuleSource() = default;
  virtual Result<Value> require_module(std::string_view name, const CachedBundle* bundle, const std::string& origin) = 0;
};

// Carried reads (docs/jails.md): whether a run under `rule` may get `service`'s answers
// ahead: a service marked read_only that Lua reaches and that runs synchronously (with
// `network_thread`, one allowed there too), granted by the rule, under no message-rate quota
// (each call must be counted against it as it happens).
bool may_carry(const ServiceRegistry& services, const PolicyRule* rule, std::string_view service, bool network_thread);
// The answer to carry, or nullopt (not carried, or it failed: the run asks when it calls).
std::optional<Value> carry_read(const ServiceRegistry& services, const PolicyRule* rule, std::string_view service,
                                const Value& args, bool network_thread);

// `node.call` gets the node's services (not the peers-only protocol services), and
// `require_remote` the modules `modules` finds. Used for remote evaluations and fetched
// modules. With a policy rule, only the services it grants, at most at its message rate.
class NodeHostCalls final : public sandbox::HostCalls {
 public:
  NodeHostCalls(const ServiceRegistry& services, ModuleSource& modules, const CachedBundle* bundle, std::string origin,
                const PolicyRule* rule = nullptr)
      : services_(services), modules_(modules), bundle_(bundle), origin_(std::move(origin)), rule_(rule),
        rate_(rule != nullptr ? rule->quotas.messages_per_second : 0) {}
  Result<Value> call(std::string_view service, const Value& args) override;
  bool carries(std::string_view service) const override { return may_carry(services_, rule_, service, false); }
  std::optional<Value> read_ahead(std::string_view service, const Value& args) override {
    return carry_read(services_, rule_, service, args, false);
  }

 private:
  const ServiceRegistry& services_;
  ModuleSource& modules_;
  const CachedBundle* bundle_;
  std::string origin_;
  const PolicyRule* rule_;
  RateLimiter rate_;
};

}  // namespace sojourn
