// The services every node has, so that remote code has a resource to use: a key-value
// store (agents/store/kv_store.hpp: in memory, and with a data dir also in its SQLite store)
// and node.info.
#include <algorithm>
#include <shared_mutex>

#include "agents/node_jails.hpp"
#include "agents/node_stats.hpp"
#include "agents/services.hpp"
#include "agents/store/kv_store.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"

namespace sojourn {

Result<void> register_builtin_services(Node& node, const NodeCounters& counters, const ServiceRegistry& registry,
                                       NodeJails& jails, std::shared_ptr<KvStore> kv) {
  ServiceOptions fast{true};
  // A write to the data dir waits for the disk (an fsync with durability full): it runs on a
  // worker, never on the network thread.
  ServiceOptions writes{!kv->durable()};
  // kv.get's answers may be carried into a guest with a run's request (docs/jails.md).
  ServiceOptions carried_read = fast;
  carried_read.read_only = true;
  for (const char* name : {"kv.get", "kv.put", "kv.del", "kv.keys"}) {
    const bool read = std::string_view(name) == "kv.get" || std::string_view(name) == "kv.keys";
    node.register_service(name, [kv, name](const Value& args) -> Result<Value> { return kv->call(name, args); },
                          std::string_view(name) == "kv.get" ? carried_read : read ? fast : writes);
  }

  node.register_service("node.info", [name = node.options().name, id = node.node_id(), &counters, &registry, &jails](const Value&) -> Result<Value> {
    Value info = Value::table();
    info.set("name", name);
    info.set("id", id);  // what TRANSFERs and signed evaluations are addressed to
    info.set("version", "0.1.0");
    info.set("protocol", static_cast<int>(kProtocolVersion));
    auto up = std::chrono::steady_clock::now() - counters.started;
    info.set("uptime_ms", static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(up).count()));
    info.set("requests_served", static_cast<std::int64_t>(counters.calls_served + counters.evals_served));
    Value services = info.new_table();
    for (auto& n : registry.names()) services.push(Value(std::move(n)));
    info.set("services", services);
    Value levels = info.new_table();
    // The levels whose jail has started (trusted always has): asking must not start one.
    for (Isolation level : jails.started_levels()) levels.push(std::string(isolation_name(level)));
    info.set("isolation_levels", levels);
    info.set("peer_isolation", std::string(isolation_name(jails.node_peer_level())));
    return info;
  }, fast);
  return {};
}

}  // namespace sojourn
