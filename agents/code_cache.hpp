// Internal: a node's code cache. Bundles by hash (in memory, and on disk when a directory
// is given) and the modules this node publishes, by name. Bounded: past max_entries bundles
// or max_bytes of encodings, the least recently used unpublished bundle goes (from memory
// and from the directory). Code from a peer is checked (check) before it is stored (store).
// Thread-safe.
#pragma once

#include <cstdint>
#include <list>
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
  // 0 for a bound: no bound.
  explicit CodeCache(std::string directory = {}, std::size_t max_bytes = 0, std::size_t max_entries = 0);

  // Decodes a bundle and checks its hash, without storing it (the one already here when it
  // is). With `expected_hash`, a different hash is refused: hash_mismatch "bundle hash
  // mismatch: expected H1, got H2"; decode_bundle's errors otherwise.
  Result<std::shared_ptr<const CachedBundle>> check(std::span<const std::uint8_t> bytes, std::string_view expected_hash = {});
  // Keeps a checked bundle; returns the one kept (an earlier copy with its hash, if any).
  std::shared_ptr<const CachedBundle> store(std::shared_ptr<const CachedBundle> bundle);
  // check, then store: for code this node itself vouches for (published, fetched on purpose).
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

  std::size_t entries();
  std::size_t bytes();

 private:
  struct Entry {
    std::shared_ptr<const CachedBundle> bundle;
    std::list<std::string>::iterator recent;  // its place in recent_
  };
  std::string path_of(std::string_view hash) const;
  void store_on_disk(const CachedBundle& b);
  // Under mutex_: adds (or finds) an entry, marks it most recent, then evicts past the bounds.
  std::shared_ptr<const CachedBundle> insert_locked(std::shared_ptr<const CachedBundle> bundle, bool& added);
  void evict_locked();

  std::string directory_;
  std::size_t max_bytes_, max_entries_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> by_hash_;
  std::list<std::string> recent_;  // hashes, most recently used first
  std::size_t bytes_ = 0;
  std::unordered_map<std::string, std::string> published_;   // name -> hash
  std::unordered_map<std::string, std::string> fetched_;     // "peer/name" -> hash
};

}  // namespace sojourn
