// Internal: what Lua code run by a node reaches through its host calls (node.call and
// require_remote), within what the node's policy grants it.
#pragma once

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

 private:
  const ServiceRegistry& services_;
  ModuleSource& modules_;
  const CachedBundle* bundle_;
  std::string origin_;
  const PolicyRule* rule_;
  RateLimiter rate_;
};

}  // namespace sojourn
