// The node's kv store (kv_store.hpp): clients' writes committed one by one, agent steps'
// writes buffered and committed with the step's outcome.
#include "agents/store/kv_store.hpp"

#include <algorithm>
#include <mutex>
#include <set>

#include "sojourn/core/messages.hpp"

namespace sojourn {

namespace {

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
    return errors::invalid_argument(std::string(service) + " expects a string key as argument " + std::to_string(index) +
                                    ", got " + std::string(v.type_name()));
  }
  return v.as_string();
}

Error over_limit(std::size_t max_bytes) {
  return errors::service_failed("kv.put", "the store would exceed its limit of " + std::to_string(max_bytes) + " bytes");
}

Value sorted_keys(std::vector<std::string> keys) {
  std::sort(keys.begin(), keys.end());
  Value out = Value::table();
  for (auto& k : keys) out.push(Value(std::move(k)));
  return out;
}

}  // namespace

KvStore::KvStore(std::size_t max_bytes, std::shared_ptr<NodeStore> store, const std::optional<Error>* store_error)
    : max_bytes_(max_bytes), store_(std::move(store)), store_error_(store_error) {}

bool KvStore::is_kv_service(std::string_view service) {
  return service == "kv.get" || service == "kv.put" || service == "kv.del" || service == "kv.keys";
}

std::optional<Error> KvStore::refused(std::string_view service) const {
  if (store_error_ == nullptr || !*store_error_) return std::nullopt;
  return errors::service_failed(service, (*store_error_)->message);
}

Result<void> KvStore::load() {
  if (!store_) return {};
  // What the store holds is what the node acknowledged: a row that does not decode is
  // damage, reported, never skipped.
  auto rows = store_->load(NodeStore::Table::kv);
  if (!rows) return rows.error();
  std::unique_lock lock(mutex_);
  for (auto& [key, bytes] : *rows) {
    auto value = decode_value(bytes);
    if (!value) return errors::invalid_argument(store_->path() + ": kv entry '" + key + "' does not decode: " + value.error().message);
    const std::size_t size = key.size() + bytes.size();
    bytes_ += size;
    entries_.insert_or_assign(key, Entry{std::move(*value), size});
  }
  return {};
}

void KvStore::apply_locked(const std::string& key, Value value, std::size_t bytes) {
  auto it = entries_.find(key);
  const std::size_t replaced = it == entries_.end() ? 0 : it->second.bytes;
  bytes_ = bytes_ - replaced + bytes;
  if (value.is_nil()) {
    if (it != entries_.end()) entries_.erase(it);
  } else {
    entries_.insert_or_assign(key, Entry{std::move(value), bytes});
  }
}

Result<Value> KvStore::call(std::string_view service, const Value& args) {
  if (auto no = refused(service)) return *no;
  if (service == "kv.keys") {
    std::vector<std::string> keys;
    {
      std::shared_lock lock(mutex_);
      keys.reserve(entries_.size());
      for (const auto& [k, v] : entries_) keys.push_back(k);
    }
    return sorted_keys(std::move(keys));
  }
  auto key = string_arg(args, 1, service);
  if (!key) return key.error();
  if (service == "kv.get") {
    std::shared_lock lock(mutex_);
    auto it = entries_.find(*key);
    return it == entries_.end() ? Value{} : it->second.value;
  }
  if (service == "kv.del") {
    std::unique_lock lock(mutex_);
    if (entries_.count(*key) == 0) return Value(false);
    if (store_) {
      if (auto stored = store_->erase(NodeStore::Table::kv, *key); !stored) return errors::service_failed("kv.del", stored.error().message);
    }
    apply_locked(*key, Value{}, 0);
    return Value(true);
  }
  // kv.put: stored values are never mutated afterwards, so readers may share them.
  Value value = detached_copy(args.get(2));
  std::vector<std::uint8_t> encoded;
  if (!value.is_nil()) encoded = encode_value(value);
  const std::size_t bytes = value.is_nil() ? 0 : key->size() + encoded.size();
  std::unique_lock lock(mutex_);
  auto it = entries_.find(*key);
  const std::size_t replaced = it == entries_.end() ? 0 : it->second.bytes;
  if (bytes_ + reserved_ - replaced + bytes > max_bytes_) return over_limit(max_bytes_);
  // Committed to the data dir before the answer (and before readers see it); a write that
  // fails changes nothing and is answered as failed.
  if (store_) {
    auto stored = value.is_nil() ? store_->erase(NodeStore::Table::kv, *key) : store_->put(NodeStore::Table::kv, *key, encoded);
    if (!stored) return errors::service_failed("kv.put", stored.error().message);
  }
  apply_locked(*key, std::move(value), bytes);
  return Value(true);
}

Result<void> KvStore::commit(KvStep& step, std::vector<NodeStore::Write> extra) {
  // A step that wrote nothing here: its outcome alone, and kv readers never wait for it.
  if (step.writes_.empty()) return store_ ? store_->write(extra) : Result<void>{};
  std::unique_lock lock(mutex_);
  if (store_) {
    std::vector<NodeStore::Write> writes;
    writes.reserve(step.writes_.size() + extra.size());
    for (auto& [key, w] : step.writes_) {
      if (w.value.is_nil()) {
        writes.push_back(NodeStore::Write{NodeStore::Table::kv, key, std::nullopt});
      } else {
        writes.push_back(NodeStore::Write{NodeStore::Table::kv, key, std::move(w.encoded)});
      }
    }
    for (auto& w : extra) writes.push_back(std::move(w));
    if (auto stored = store_->write(writes); !stored) {
      lock.unlock();
      step.release();
      return stored.error();
    }
  }
  for (auto& [key, w] : step.writes_) {
    // What was held for a put is its entry's size.
    const std::size_t size = w.bytes;
    reserved_ -= w.bytes;
    w.bytes = 0;
    apply_locked(key, std::move(w.value), size);
  }
  step.writes_.clear();
  return {};
}

KvStep::~KvStep() { release(); }

void KvStep::release() {
  std::size_t held = 0;
  for (const auto& [key, w] : writes_) held += w.bytes;
  writes_.clear();
  if (held == 0) return;
  std::unique_lock lock(kv_->mutex_);
  kv_->reserved_ -= held;
}

Result<Value> KvStep::call(std::string_view service, const Value& args) {
  if (auto no = kv_->refused(service)) return *no;
  if (service == "kv.keys") {
    std::set<std::string> keys;
    {
      std::shared_lock lock(kv_->mutex_);
      for (const auto& [k, v] : kv_->entries_) keys.insert(k);
    }
    for (const auto& [k, w] : writes_) {
      if (w.value.is_nil()) {
        keys.erase(k);
      } else {
        keys.insert(k);
      }
    }
    return sorted_keys(std::vector<std::string>(keys.begin(), keys.end()));
  }
  auto key = string_arg(args, 1, service);
  if (!key) return key.error();
  auto mine = writes_.find(*key);
  if (service == "kv.get") {
    if (mine != writes_.end()) return mine->second.value;
    std::shared_lock lock(kv_->mutex_);
    auto it = kv_->entries_.find(*key);
    return it == kv_->entries_.end() ? Value{} : it->second.value;
  }
  const bool del = service == "kv.del";
  if (del) {
    bool present;
    if (mine != writes_.end()) {
      present = !mine->second.value.is_nil();
    } else {
      std::shared_lock lock(kv_->mutex_);
      present = kv_->entries_.count(*key) != 0;
    }
    if (!present) return Value(false);
  }
  Pending next;
  if (!del) {
    next.value = detached_copy(args.get(2));
    if (!next.value.is_nil()) next.encoded = encode_value(next.value);
  }
  if (!next.value.is_nil()) {
    // Room for the whole value is held until the step ends: more than the put may add
    // (it may replace a value), never less.
    next.bytes = key->size() + next.encoded.size();
    const std::size_t held = mine != writes_.end() ? mine->second.bytes : 0;
    std::unique_lock lock(kv_->mutex_);
    if (kv_->bytes_ + kv_->reserved_ - held + next.bytes > kv_->max_bytes_) return over_limit(kv_->max_bytes_);
    kv_->reserved_ = kv_->reserved_ - held + next.bytes;
  } else if (mine != writes_.end() && mine->second.bytes != 0) {
    std::unique_lock lock(kv_->mutex_);
    kv_->reserved_ -= mine->second.bytes;
  }
  writes_.insert_or_assign(*key, std::move(next));
  return Value(true);
}

}  // namespace sojourn
