// Internal: a node's service registry: what `node.call` from Lua and peers' call requests
// reach, and how one service is invoked (its exceptions become service_failed).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/transports/asio.hpp"

namespace sojourn {

class NodeJails;
class NodeStore;
class KvStore;
struct NodeCounters;

// A protocol service that answers later without holding a worker (agent.wait): it runs on
// the network thread.
using AsyncPeerService = std::function<asio::awaitable<Result<Value>>(Value args, PeerIdentity caller)>;

struct ServiceEntry {
  PeerService fn;
  ServiceOptions options;
  AsyncPeerService async_fn;  // set: serving awaits it instead of running fn
};

// One caller's memo of its last lookup (ServiceRegistry::lookup_memo). Not shared between
// threads; it holds the entry it found, so the entry outlives a later add() until refilled.
struct ServiceLookupMemo {
  std::string name;
  std::shared_ptr<const ServiceEntry> entry;  // null: no such service
  std::uint64_t generation = 0;               // 0: empty (registries' generations start at 1)
};

// Thread-safe.
class ServiceRegistry {
 public:
  // Adds or replaces a service.
  void add(std::string name, ServiceEntry entry);
  // The names of every service, sorted.
  std::vector<std::string> names() const;
  // A copy of the entry: no_such_service when there is none.
  Result<ServiceEntry> find(std::string_view service) const;
  // The entry as it is now (null when there is none), without copying its functions:
  // a later add() replaces it and leaves this one to its holders.
  std::shared_ptr<const ServiceEntry> lookup(std::string_view service) const;
  // lookup() for a caller that keeps asking for the same service (the network thread's
  // inline paths): while no add() has run since `memo` was filled, and for the same name,
  // the memo's entry, without the lock, the hash or a shared_ptr copy. The pointer (null when
  // there is no such service) stays valid until `memo` is next used or destroyed.
  const ServiceEntry* lookup_memo(std::string_view service, ServiceLookupMemo& memo) const;
  // Runs `fn`; an exception it throws becomes service_failed "service NAME failed: WHAT".
  static Result<Value> invoke(std::string_view service, const PeerService& fn, const Value& args,
                              const PeerIdentity& caller);
  // A service of this node, called by its own code (caller "local").
  Result<Value> call_local(std::string_view service, const Value& args) const;
  // node.call from Lua: protocol services (peers_only) are not reachable.
  Result<Value> call_from_lua(std::string_view service, const Value& args) const;

 private:
  // Looked up by string_view, without making a string of the name.
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  mutable std::shared_mutex mutex_;
  // Changed by every add() (under the unique lock), unique among all registries (taken
  // from one process-wide counter): a memo filled from another registry never matches.
  std::atomic<std::uint64_t> generation_{next_generation()};
  static std::uint64_t next_generation();
  std::unordered_map<std::string, std::shared_ptr<const ServiceEntry>, NameHash, std::equal_to<>> services_;
};

// Registers kv.get/put/del/keys (over `kv`, agents/store/kv_store.hpp) and node.info on a
// new node (builtin_services.cpp); node.info reads the counters, the registry and the jails.
Result<void> register_builtin_services(Node& node, const NodeCounters& counters, const ServiceRegistry& registry,
                                       NodeJails& jails, std::shared_ptr<KvStore> kv);

}  // namespace sojourn
