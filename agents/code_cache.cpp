// The code cache: verified bundles by hash, in memory and optionally on disk.
#include "agents/code_cache.hpp"

#include <filesystem>
#include <fstream>
#include <iterator>

#include "sojourn/core/log.hpp"

namespace sojourn {

CodeCache::CodeCache(std::string directory, std::size_t max_bytes, std::size_t max_entries)
    : directory_(std::move(directory)), max_bytes_(max_bytes), max_entries_(max_entries) {
  if (!directory_.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(directory_, ec);
    if (ec) log_warn("code", "cannot create the code cache directory " + directory_ + ": " + ec.message());
  }
}

std::string CodeCache::path_of(std::string_view hash) const {
  return directory_ + "/" + std::string(hash) + ".bundle";
}

void CodeCache::store_on_disk(const CachedBundle& b) {
  if (directory_.empty()) return;
  // Write then rename: a reader never sees half a bundle.
  const std::string path = path_of(b.hash);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    // SAFETY: the vector's bytes are written as chars of the same size.
    out.write(reinterpret_cast<const char*>(b.bytes.data()), static_cast<std::streamsize>(b.bytes.size()));
    if (!out) {
      log_warn("code", "cannot write " + tmp);
      return;
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) log_warn("code", "cannot rename " + tmp + ": " + ec.message());
}

Result<std::shared_ptr<const CachedBundle>> CodeCache::check(std::span<const std::uint8_t> bytes,
                                                             std::string_view expected_hash) {
  std::string hash = sha256_hex(bytes);
  if (!expected_hash.empty() && hash != expected_hash) {
    return make_error(Errc::hash_mismatch, "bundle hash mismatch: expected " + std::string(expected_hash) + ", got " + hash);
  }
  {
    std::lock_guard lock(mutex_);
    auto it = by_hash_.find(hash);
    if (it != by_hash_.end()) return it->second.bundle;
  }
  auto bundle = decode_bundle(bytes);
  if (!bundle) return bundle.error();
  return std::shared_ptr<const CachedBundle>(
      std::make_shared<CachedBundle>(CachedBundle{hash, std::move(*bundle), {bytes.begin(), bytes.end()}}));
}

std::shared_ptr<const CachedBundle> CodeCache::store(std::shared_ptr<const CachedBundle> bundle) {
  bool added = false;
  std::shared_ptr<const CachedBundle> kept;
  {
    std::lock_guard lock(mutex_);
    kept = insert_locked(std::move(bundle), added);
  }
  if (added) store_on_disk(*kept);
  return kept;
}

std::shared_ptr<const CachedBundle> CodeCache::insert_locked(std::shared_ptr<const CachedBundle> bundle, bool& added) {
  auto it = by_hash_.find(bundle->hash);
  if (it != by_hash_.end()) {
    recent_.splice(recent_.begin(), recent_, it->second.recent);
    added = false;
    return it->second.bundle;
  }
  recent_.push_front(bundle->hash);
  bytes_ += bundle->bytes.size();
  by_hash_.emplace(bundle->hash, Entry{bundle, recent_.begin()});
  evict_locked();
  added = by_hash_.count(bundle->hash) != 0;  // a bundle over the bound alone is not written to disk
  return bundle;
}

void CodeCache::evict_locked() {
  auto over = [&] {
    return (max_entries_ != 0 && by_hash_.size() > max_entries_) || (max_bytes_ != 0 && bytes_ > max_bytes_);
  };
  // Oldest first; a published module stays (this node serves it by name).
  for (auto r = recent_.end(); over() && r != recent_.begin();) {
    --r;
    bool pinned = false;
    for (const auto& [name, hash] : published_) pinned = pinned || hash == *r;
    if (pinned) continue;
    auto it = by_hash_.find(*r);
    bytes_ -= it->second.bundle->bytes.size();
    if (!directory_.empty()) {
      std::error_code ec;
      std::filesystem::remove(path_of(*r), ec);
    }
    by_hash_.erase(it);
    r = recent_.erase(r);
  }
}

Result<std::shared_ptr<const CachedBundle>> CodeCache::put_encoded(std::span<const std::uint8_t> bytes,
                                                                   std::string_view expected_hash) {
  auto checked = check(bytes, expected_hash);
  if (!checked) return checked.error();
  return store(std::move(*checked));
}

Result<std::shared_ptr<const CachedBundle>> CodeCache::put(const Bundle& bundle) {
  if (auto v = validate_bundle(bundle); !v) return v.error();
  std::vector<std::uint8_t> bytes = encode_bundle(bundle);
  return put_encoded(bytes);
}

std::shared_ptr<const CachedBundle> CodeCache::get(std::string_view hash) {
  {
    std::lock_guard lock(mutex_);
    auto it = by_hash_.find(std::string(hash));
    if (it != by_hash_.end()) {
      recent_.splice(recent_.begin(), recent_, it->second.recent);
      return it->second.bundle;
    }
  }
  if (directory_.empty() || !is_bundle_hash(hash)) return nullptr;
  std::ifstream in(path_of(hash), std::ios::binary);
  if (!in) return nullptr;
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // A file changed on disk is not trusted: its hash must still be its name.
  if (sha256_hex(bytes) != hash) {
    log_warn("code", "ignoring " + path_of(hash) + ": its content does not match its hash");
    return nullptr;
  }
  auto bundle = decode_bundle(bytes);
  if (!bundle) return nullptr;
  auto entry = std::make_shared<CachedBundle>(CachedBundle{std::string(hash), std::move(*bundle), std::move(bytes)});
  std::lock_guard lock(mutex_);
  bool added = false;
  return insert_locked(std::move(entry), added);
}

bool CodeCache::contains(std::string_view hash) { return get(hash) != nullptr; }

std::size_t CodeCache::entries() {
  std::lock_guard lock(mutex_);
  return by_hash_.size();
}

std::size_t CodeCache::bytes() {
  std::lock_guard lock(mutex_);
  return bytes_;
}

Result<std::string> CodeCache::publish(const Bundle& bundle) {
  if (auto v = validate_bundle(bundle); !v) return v.error();
  auto checked = check(encode_bundle(bundle));
  if (!checked) return checked.error();
  bool added = false;
  std::shared_ptr<const CachedBundle> kept;
  {
    std::lock_guard lock(mutex_);
    published_[bundle.manifest.name] = (*checked)->hash;  // pinned before the bound is applied
    kept = insert_locked(std::move(*checked), added);
  }
  if (added) store_on_disk(*kept);
  return kept->hash;
}

std::shared_ptr<const CachedBundle> CodeCache::published(std::string_view name) {
  std::string hash;
  {
    std::lock_guard lock(mutex_);
    auto it = published_.find(std::string(name));
    if (it == published_.end()) return nullptr;
    hash = it->second;
  }
  return get(hash);
}

void CodeCache::remember_fetch(const std::string& peer, const std::string& name, const std::string& hash) {
  std::lock_guard lock(mutex_);
  fetched_[peer + "/" + name] = hash;
  if (!directory_.empty()) {
    std::ofstream out(directory_ + "/fetched", std::ios::app);
    out << peer << "/" << name << " " << hash << "\n";
  }
}

std::string CodeCache::last_fetch(const std::string& peer, const std::string& name) {
  {
    std::lock_guard lock(mutex_);
    auto it = fetched_.find(peer + "/" + name);
    if (it != fetched_.end()) return it->second;
  }
  // Across restarts (the CLI is one process per command) the directory remembers too.
  if (directory_.empty()) return {};
  std::ifstream in(directory_ + "/fetched");
  std::string line, found;
  const std::string key = peer + "/" + name + " ";
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) found = line.substr(key.size());
  }
  return found;
}

}  // namespace sojourn
