// A node's service registry (services.hpp).
#include "agents/services.hpp"

#include <algorithm>
#include <mutex>

namespace sojourn {

namespace {
const PeerIdentity& local_caller() {
  static const PeerIdentity local{"local", {}, {}};
  return local;
}
}  // namespace

void ServiceRegistry::add(std::string name, ServiceEntry entry) {
  std::unique_lock lock(mutex_);
  services_[std::move(name)] = std::make_shared<const ServiceEntry>(std::move(entry));
  generation_.store(next_generation(), std::memory_order_release);
}

std::uint64_t ServiceRegistry::next_generation() {
  static std::atomic<std::uint64_t> counter{0};
  return counter.fetch_add(1, std::memory_order_relaxed) + 1;
}

std::vector<std::string> ServiceRegistry::names() const {
  std::vector<std::string> out;
  {
    std::shared_lock lock(mutex_);
    for (const auto& [name, entry] : services_) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<ServiceEntry> ServiceRegistry::find(std::string_view service) const {
  auto entry = lookup(service);
  if (!entry) return errors::no_such_service(service);
  return *entry;
}

std::shared_ptr<const ServiceEntry> ServiceRegistry::lookup(std::string_view service) const {
  std::shared_lock lock(mutex_);
  auto it = services_.find(service);
  return it == services_.end() ? nullptr : it->second;
}

const ServiceEntry* ServiceRegistry::lookup_memo(std::string_view service, ServiceLookupMemo& memo) const {
  // Acquire: an unchanged generation means no add() since the memo's fill (which read it
  // under the lock, with the map as that generation left it).
  if (memo.generation == generation_.load(std::memory_order_acquire) && memo.name == service) {
    return memo.entry.get();
  }
  std::shared_lock lock(mutex_);
  auto it = services_.find(service);
  memo.entry = it == services_.end() ? nullptr : it->second;
  memo.name.assign(service);
  memo.generation = generation_.load(std::memory_order_relaxed);
  return memo.entry.get();
}

Result<Value> ServiceRegistry::invoke(std::string_view service, const PeerService& fn, const Value& args,
                                      const PeerIdentity& caller) {
  try {
    return fn(args.is_table() ? args : Value::table(), caller);
  } catch (const std::exception& e) {
    return errors::service_failed(service, e.what());
  }
}

Result<Value> ServiceRegistry::call_local(std::string_view service, const Value& args) const {
  auto entry = lookup(service);
  if (!entry) return errors::no_such_service(service);
  return invoke(service, entry->fn, args, local_caller());
}

Result<Value> ServiceRegistry::call_from_lua(std::string_view service, const Value& args) const {
  auto entry = lookup(service);
  if (!entry || entry->options.peers_only) return errors::no_such_service(service);
  return invoke(service, entry->fn, args, local_caller());
}

}  // namespace sojourn
