// Internal: what a node with a data dir keeps across restarts (docs/reliability.md): one
// SQLite database, DIR/sojourn.db, in WAL mode. Each table maps a text key to bytes the
// caller encodes (the kv store's values, tracked agents). A write returns once committed:
// with Durability::full (synchronous=FULL) the commit is on disk, so a crash of the process
// or of the machine loses nothing acknowledged; with Durability::normal (synchronous=NORMAL)
// a crash of the process loses nothing, a power loss may lose the last commits.
// Thread-safe (one connection behind a mutex). SQLite stays out of this header.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/error.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace sojourn {

class NodeStore {
 public:
  enum class Table { kv, tracked, residents };
  using Row = std::pair<std::string, std::vector<std::uint8_t>>;

  // Opens (or makes) DIR/sojourn.db. A file that is not a database, is damaged, is from a
  // newer schema or cannot be written is an error naming the file, never an empty store.
  static Result<std::unique_ptr<NodeStore>> open(const std::string& dir, Durability durability);
  ~NodeStore();
  NodeStore(const NodeStore&) = delete;
  NodeStore& operator=(const NodeStore&) = delete;

  const std::string& path() const { return path_; }
  Durability durability() const { return durability_; }

  // Inserts or replaces; committed when it returns.
  Result<void> put(Table table, std::string_view key, std::span<const std::uint8_t> value);
  // Removes the key if present; committed when it returns.
  Result<void> erase(Table table, std::string_view key);
  // Every row of the table, by key.
  Result<std::vector<Row>> load(Table table);

 private:
  NodeStore(std::string path, Durability durability) : path_(std::move(path)), durability_(durability) {}
  Result<void> exec(const char* sql);
  Error failure(const std::string& what) const;  // "DB: WHAT: sqlite's message"

  std::string path_;
  Durability durability_;
  std::mutex mutex_;
  sqlite3* db_ = nullptr;
  // Prepared once: per table, put and erase.
  sqlite3_stmt* put_[3] = {nullptr, nullptr, nullptr};
  sqlite3_stmt* erase_[3] = {nullptr, nullptr, nullptr};
};

}  // namespace sojourn
