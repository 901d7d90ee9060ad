// The services every node has, so that remote code has a resource to use: a key-value
// store (in memory, and with a data dir also in its SQLite store: a write is committed
// there before it is answered) and node.info.
#include <algorithm>
#include <shared_mutex>

#include "agents/node_jails.hpp"
#include "agents/node_stats.hpp"
#include "agents/services.hpp"
#include "agents/store/node_store.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"

namespace sojourn {

namespace {

struct KvEntry {
  Value value;
  std::size_t bytes;  // key + encoded value: what the store's limit counts
};

struct KvStore {
  std::shared_mutex mutex;
  std::unordered_map<std::string, KvEntry> entries;
  std::size_t bytes = 0;
  std::size_t max_bytes = 0;
  std::shared_ptr<NodeStore> store;                 // null: memory only
  const std::optional<Error>* store_error = nullptr;  // set: the data dir's store is unusable
  // The error to answer when the store cannot be used, if so.
  std::optional<Error> refused(std::string_view service) const {
    if (store_error == nullptr || !*store_error) return std::nullopt;
    return errors::service_failed(service, (*store_error)->message);
  }
};

// A copy in a graph of its own: the caller may change its tables after the call.
Value detached_copy(const Value& v) {
  if (!v.is_table()) return v;
  Value holder = Value::table();
  holder.set(1, v);
  return holder.get(1);
}

Result<std::string> string_arg(const Value& args, std::int64_t index, std::string_view service) {
  Value v = args.get(index);
  if (!v.is_string()) {
    return errors::invalid_argument(std::string(service) + " expects a string key as argument " +
                                                  std::to_string(index) + ", got " + std::string(v.type_name()));
  }
  return v.as_string();
}

}  // namespace

Result<void> register_builtin_services(Node& node, const NodeCounters& counters, const ServiceRegistry& registry,
                                       NodeJails& jails, std::shared_ptr<NodeStore> store,
                                       const std::optional<Error>* store_error) {
  auto kv = std::make_shared<KvStore>();
  kv->max_bytes = node.options().kv_max_bytes;
  kv->store = std::move(store);
  kv->store_error = store_error;
  Result<void> loaded;
  if (kv->store) {
    // What the store holds is what the node acknowledged: a row that does not decode is
    // damage, reported, never skipped.
    auto rows = kv->store->load(NodeStore::Table::kv);
    if (!rows) {
      loaded = rows.error();
    } else {
      for (auto& [key, bytes] : *rows) {
        auto value = decode_value(bytes);
        if (!value) {
          loaded = errors::invalid_argument(kv->store->path() + ": kv entry '" + key + "' does not decode: " + value.error().message);
          break;
        }
        const std::size_t size = key.size() + bytes.size();
        kv->bytes += size;
        kv->entries.insert_or_assign(key, KvEntry{std::move(*value), size});
      }
    }
  }
  ServiceOptions fast{true};
  // A write to the data dir waits for the disk (an fsync with durability full): it runs on a
  // worker, never on the network thread.
  ServiceOptions writes{!kv->store};

  node.register_service("kv.get", [kv](const Value& args) -> Result<Value> {
    if (auto refused = kv->refused("kv.get")) return *refused;
    auto key = string_arg(args, 1, "kv.get");
    if (!key) return key.error();
    std::shared_lock lock(kv->mutex);
    auto it = kv->entries.find(*key);
    return it == kv->entries.end() ? Value{} : it->second.value;
  }, fast);

  node.register_service("kv.put", [kv](const Value& args) -> Result<Value> {
    if (auto refused = kv->refused("kv.put")) return *refused;
    auto key = string_arg(args, 1, "kv.put");
    if (!key) return key.error();
    // Stored values are never mutated afterwards, so readers may share them.
    Value value = detached_copy(args.get(2));
    std::vector<std::uint8_t> encoded;
    if (!value.is_nil()) encoded = encode_value(value);
    std::size_t bytes = value.is_nil() ? 0 : key->size() + encoded.size();
    std::unique_lock lock(kv->mutex);
    auto it = kv->entries.find(*key);
    std::size_t replaced = it == kv->entries.end() ? 0 : it->second.bytes;
    if (kv->bytes - replaced + bytes > kv->max_bytes) {
      return errors::service_failed("kv.put", "the store would exceed its limit of " + std::to_string(kv->max_bytes) + " bytes");
    }
    // Committed to the data dir before the answer (and before readers see it); a write that
    // fails changes nothing and is answered as failed.
    if (kv->store) {
      auto stored = value.is_nil() ? kv->store->erase(NodeStore::Table::kv, *key)
                                   : kv->store->put(NodeStore::Table::kv, *key, encoded);
      if (!stored) return errors::service_failed("kv.put", stored.error().message);
    }
    kv->bytes = kv->bytes - replaced + bytes;
    if (value.is_nil()) {
      if (it != kv->entries.end()) kv->entries.erase(it);
    } else {
      kv->entries.insert_or_assign(*key, KvEntry{std::move(value), bytes});
    }
    return Value(true);
  }, writes);

  node.register_service("kv.del", [kv](const Value& args) -> Result<Value> {
    if (auto refused = kv->refused("kv.del")) return *refused;
    auto key = string_arg(args, 1, "kv.del");
    if (!key) return key.error();
    std::unique_lock lock(kv->mutex);
    auto it = kv->entries.find(*key);
    if (it == kv->entries.end()) return Value(false);
    if (kv->store) {
      if (auto stored = kv->store->erase(NodeStore::Table::kv, *key); !stored) {
        return errors::service_failed("kv.del", stored.error().message);
      }
    }
    kv->bytes -= it->second.bytes;
    kv->entries.erase(it);
    return Value(true);
  }, writes);

  node.register_service("kv.keys", [kv](const Value&) -> Result<Value> {
    if (auto refused = kv->refused("kv.keys")) return *refused;
    std::vector<std::string> keys;
    {
      std::shared_lock lock(kv->mutex);
      keys.reserve(kv->entries.size());
      for (const auto& [k, v] : kv->entries) keys.push_back(k);
    }
    std::sort(keys.begin(), keys.end());
    Value out = Value::table();
    for (auto& k : keys) out.push(Value(std::move(k)));
    return out;
  }, fast);

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
  return loaded;
}

}  // namespace sojourn
