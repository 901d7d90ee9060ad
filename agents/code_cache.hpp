// Internal: a node's code cache. Bundles by hash (in memory, and on disk when a directory
// is given) and the modules this node publishes, by name. Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "sojourn/core/bundle.hpp"

namespace sojourn {

struct CachedBundle {
  std::string hash;
  Bundle bundle;
  std::vector<std::uint8_t> bytes;  // the canonical encoding, sent as is
};

class CodeCache {
 public:
  explicit CodeCache(std::string directory = {});

  // Adds a bundle from its encoding. With `expected_hash`, a different hash is refused:
  // hash_mismatch "bundle hash mismatch: expected H1, got H2".
  Result<std::shared_ptr<const CachedBundle>> put_encoded(std::span<const std::uint8_t> bytes,
                                                          std::string_view expected_hash = {});
  Result<std::shared_ptr<const CachedBundle>> put(const Bundle& bundle);
  // From memory, else from the directory (verified again on the way in).
  std::shared_ptr<const CachedBundle> get(std::string_view hash);
  bool contains(std::string_view hash);

  // Published modules: name -> bundle.
  Result<std::string> publish(const Bundle& bundle);
  std::shared_ptr<const CachedBundle> published(std::string_view name);
  // The last hash fetched for a module of a peer ("peer/name"), so a second fetch can
  // tell the peer which version is already here.
  void remember_fetch(const std::string& peer, const std::string& name, const std::string& hash);
  std::string last_fetch(const std::string& peer, const std::string& name);


 private:
  std::string path_of(std::string_view hash) const;
  void store_on_disk(const CachedBundle& b);

  std::string directory_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<const CachedBundle>> by_hash_;
  std::unordered_map<std::string, std::string> published_;   // name -> hash
  std::unordered_map<std::string, std::string> fetched_;     // "peer/name" -> hash
};

}  // namespace sojourn
