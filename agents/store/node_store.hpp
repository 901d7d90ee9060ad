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
#include <optional>
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
  // kv: the kv store; tracked: agents this node is home to; residents: weak agents here;
  // commits: the COMMITs a destination deduplicates hand-overs with ("ID/EPOCH");
  // ends: end reports owed to an agent's home until it acknowledges them; nonces: replay
  // nonces of accepted TRANSFERs and signed evaluations until they expire.
  enum class Table { kv, tracked, residents, commits, ends, nonces };
  using Row = std::pair<std::string, std::vector<std::uint8_t>>;
  // One change of a transaction (write): a put, or with no value an erase. `expires` (Unix
  // ms) is kept for Table::nonces only, which prune_nonces drops by it.
  struct Write {
    Table table;
    std::string key;
    std::optional<std::vector<std::uint8_t>> value;
    std::int64_t expires = 0;
  };

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
  // All of them in one transaction, committed when it returns; on an error none is.
  Result<void> write(std::span<const Write> writes);
  // Every row of the table, by key.
  Result<std::vector<Row>> load(Table table);
  // Removes the nonces that expired at `now` (Unix ms).
  Result<void> prune_nonces(std::int64_t now);

 private:
  NodeStore(std::string path, Durability durability) : path_(std::move(path)), durability_(durability) {}
  Result<void> exec(const char* sql);
  Result<void> step(const Write& w);  // under mutex_
  Error failure(const std::string& what) const;  // "DB: WHAT: sqlite's message"

  std::string path_;
  Durability durability_;
  std::mutex mutex_;
  sqlite3* db_ = nullptr;
  // Prepared once: per table, put and erase.
  static constexpr std::size_t kTableCount = 6;
  sqlite3_stmt* put_[kTableCount] = {};
  sqlite3_stmt* erase_[kTableCount] = {};
};

}  // namespace sojourn
