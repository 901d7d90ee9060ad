// Internal: the node's kv store (kv.get, kv.put, kv.del, kv.keys), in memory and, with a
// data dir, in the node's SQLite store. A client's write is committed on its own before it
// is answered. An agent step's writes go to a KvStep: the step reads its own writes, others
// see none of them until the step's outcome is committed with them in one transaction
// (KvStore::commit; docs/reliability.md, "Exactly-once steps").
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agents/store/node_store.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn {

class KvStep;

class KvStore {
 public:
  // `store` null: memory only. While *store_error is set, every call refuses with it.
  KvStore(std::size_t max_bytes, std::shared_ptr<NodeStore> store, const std::optional<Error>* store_error);

  // Takes back what the store holds; a row that does not decode is an error naming it.
  Result<void> load();
  // A client's call: kv.get/put/del/keys with the services' arguments, a write committed
  // before it returns.
  Result<Value> call(std::string_view service, const Value& args);
  static bool is_kv_service(std::string_view service);
  bool durable() const { return store_ != nullptr; }

  // The step's writes and `extra` (the step's outcome: its agent's rows) in one transaction,
  // then the writes in memory. On an error nothing is applied, in the store or in memory.
  // The step is empty afterwards either way.
  Result<void> commit(KvStep& step, std::vector<NodeStore::Write> extra);

 private:
  friend class KvStep;
  struct Entry {
    Value value;
    std::size_t bytes;  // key + encoded value: what the store's limit counts
  };
  std::optional<Error> refused(std::string_view service) const;
  // A write of `key` (a nil value removes) under the unique lock.
  void apply_locked(const std::string& key, Value value, std::size_t bytes);

  std::shared_mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  std::size_t bytes_ = 0;
  // Bytes held for steps' buffered puts (each a put's full size): a step's commit never
  // takes the store past max_bytes_, so it is never refused for room another writer took.
  std::size_t reserved_ = 0;
  std::size_t max_bytes_;
  std::shared_ptr<NodeStore> store_;
  const std::optional<Error>* store_error_;
};

// The kv writes of one agent step, buffered until the step's outcome commits them
// (KvStore::commit); dropped with the object otherwise. One step uses it at a time.
class KvStep {
 public:
  explicit KvStep(std::shared_ptr<KvStore> kv) : kv_(std::move(kv)) {}
  ~KvStep();
  KvStep(const KvStep&) = delete;
  KvStep& operator=(const KvStep&) = delete;

  // kv.get/put/del/keys as a step sees them: the store with this step's writes over it.
  Result<Value> call(std::string_view service, const Value& args);
  std::size_t writes() const { return writes_.size(); }

 private:
  friend class KvStore;
  struct Pending {
    Value value;  // nil: removed
    std::vector<std::uint8_t> encoded;
    std::size_t bytes = 0;  // reserved for it in KvStore::reserved_
  };
  void release();

  std::shared_ptr<KvStore> kv_;
  std::map<std::string, Pending> writes_;
};

}  // namespace sojourn
