// The node's durable store over SQLite (node_store.hpp). SQLite because it is made for
// this (transactions, a write-ahead log, recovery after a crash) and a user can open the
// file with the `sqlite3` command to look inside; the issue names it the reference choice.
#include "agents/store/node_store.hpp"

#include <sqlite3.h>

#include <filesystem>

namespace sojourn {

namespace {

// The schema this code writes (PRAGMA user_version); a newer file is refused, not rewritten.
// 2 added commits, ends and nonces (a file of schema 1 gains them when opened).
constexpr int kSchemaVersion = 2;

const char* table_name(NodeStore::Table t) {
  switch (t) {
    case NodeStore::Table::kv: return "kv";
    case NodeStore::Table::tracked: return "tracked";
    case NodeStore::Table::residents: return "residents";
    case NodeStore::Table::commits: return "commits";
    case NodeStore::Table::ends: return "ends";
    case NodeStore::Table::nonces: return "nonces";
  }
  return "kv";
}

constexpr NodeStore::Table kTables[] = {NodeStore::Table::kv,      NodeStore::Table::tracked, NodeStore::Table::residents,
                                        NodeStore::Table::commits, NodeStore::Table::ends,    NodeStore::Table::nonces};

// Resets a prepared statement however the scope is left.
struct Reset {
  sqlite3_stmt* s;
  ~Reset() {
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
  }
};

}  // namespace

Error NodeStore::failure(const std::string& what) const {
  return errors::internal(path_ + ": " + what + ": " + (db_ ? sqlite3_errmsg(db_) : "cannot open"));
}

Result<void> NodeStore::exec(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string text = message ? message : sqlite3_errmsg(db_);
    sqlite3_free(message);
    return errors::invalid_argument(path_ + " cannot be used as the node's store (" + text + ")");
  }
  return {};
}

Result<std::unique_ptr<NodeStore>> NodeStore::open(const std::string& dir, Durability durability) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec)) {
    return errors::invalid_argument("cannot create the data dir " + dir + (ec ? ": " + ec.message() : ": not a directory"));
  }
  std::unique_ptr<NodeStore> store(new NodeStore((fs::path(dir) / "sojourn.db").string(), durability));
  // One connection, used under the store's own mutex.
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  if (sqlite3_open_v2(store->path_.c_str(), &store->db_, flags, nullptr) != SQLITE_OK) {
    std::string why = store->db_ ? sqlite3_errmsg(store->db_) : "out of memory";
    return errors::invalid_argument("cannot open the node's store " + store->path_ + ": " + why);
  }
  // A write-protected file opens read-only without an error: refuse it here, not at the
  // first acknowledged write.
  if (sqlite3_db_readonly(store->db_, "main") == 1) {
    return errors::invalid_argument("the node's store " + store->path_ + " is not writable");
  }
  sqlite3_busy_timeout(store->db_, 5000);
  // The first statement reads the file's header: a file that is not a database fails here.
  if (auto r = store->exec("PRAGMA journal_mode=WAL"); !r) return r.error();
  if (auto r = store->exec(durability == Durability::full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"); !r) {
    return r.error();
  }
  int version = 0;
  {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(store->db_, "PRAGMA user_version", -1, &s, nullptr) != SQLITE_OK) {
      return errors::invalid_argument(store->path_ + " cannot be used as the node's store (" + sqlite3_errmsg(store->db_) + ")");
    }
    if (sqlite3_step(s) == SQLITE_ROW) version = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
  }
  if (version > kSchemaVersion) {
    return errors::invalid_argument(store->path_ + " was written by a newer sojourn (schema " + std::to_string(version) +
                                    ", this one reads " + std::to_string(kSchemaVersion) + ")");
  }
  for (Table t : kTables) {
    // Nonces carry their expiry in a column of their own: pruned by it, in one statement.
    const std::string sql = std::string("CREATE TABLE IF NOT EXISTS ") + table_name(t) +
                            " (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL" +
                            (t == Table::nonces ? ", expires INTEGER NOT NULL" : "") + ") WITHOUT ROWID";
    if (auto r = store->exec(sql.c_str()); !r) return r.error();
  }
  if (auto r = store->exec("CREATE INDEX IF NOT EXISTS nonces_expires ON nonces (expires)"); !r) return r.error();
  if (auto r = store->exec(("PRAGMA user_version=" + std::to_string(kSchemaVersion)).c_str()); !r) return r.error();
  for (Table t : kTables) {
    const auto i = static_cast<std::size_t>(t);
    const std::string put = std::string("INSERT OR REPLACE INTO ") + table_name(t) +
                            (t == Table::nonces ? " (key, value, expires) VALUES (?1, ?2, ?3)" : " (key, value) VALUES (?1, ?2)");
    const std::string erase = std::string("DELETE FROM ") + table_name(t) + " WHERE key = ?1";
    if (sqlite3_prepare_v3(store->db_, put.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &store->put_[i], nullptr) != SQLITE_OK ||
        sqlite3_prepare_v3(store->db_, erase.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &store->erase_[i], nullptr) != SQLITE_OK) {
      return errors::invalid_argument(store->path_ + " cannot be used as the node's store (" + sqlite3_errmsg(store->db_) + ")");
    }
  }
  return store;
}

NodeStore::~NodeStore() {
  for (Table t : kTables) {
    sqlite3_finalize(put_[static_cast<std::size_t>(t)]);
    sqlite3_finalize(erase_[static_cast<std::size_t>(t)]);
  }
  if (db_) sqlite3_close(db_);  // checkpoints the WAL into the database when it is the last connection
}

Result<void> NodeStore::step(const Write& w) {
  const auto i = static_cast<std::size_t>(w.table);
  sqlite3_stmt* s = w.value ? put_[i] : erase_[i];
  Reset reset{s};
  sqlite3_bind_text(s, 1, w.key.data(), static_cast<int>(w.key.size()), SQLITE_STATIC);
  if (w.value) {
    // A zero-length blob must not bind as NULL (the column is NOT NULL).
    static const std::uint8_t none = 0;
    sqlite3_bind_blob(s, 2, w.value->empty() ? &none : w.value->data(), static_cast<int>(w.value->size()), SQLITE_STATIC);
    if (w.table == Table::nonces) sqlite3_bind_int64(s, 3, w.expires);
  }
  if (sqlite3_step(s) != SQLITE_DONE) {
    return failure(std::string(w.value ? "cannot store in " : "cannot remove from ") + table_name(w.table));
  }
  return {};
}

Result<void> NodeStore::put(Table table, std::string_view key, std::span<const std::uint8_t> value) {
  const Write w{table, std::string(key), std::vector<std::uint8_t>(value.begin(), value.end())};
  std::lock_guard lock(mutex_);
  return step(w);
}

Result<void> NodeStore::erase(Table table, std::string_view key) {
  const Write w{table, std::string(key), std::nullopt};
  std::lock_guard lock(mutex_);
  return step(w);
}

Result<void> NodeStore::write(std::span<const Write> writes) {
  if (writes.empty()) return {};
  std::lock_guard lock(mutex_);
  if (writes.size() == 1) return step(writes[0]);  // a statement is a transaction of its own
  // IMMEDIATE: the write lock is taken now, so the commit cannot fail for a reader's sake.
  if (sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) return failure("cannot begin a transaction");
  for (const Write& w : writes) {
    if (auto r = step(w); !r) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      return r;
    }
  }
  if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
    Error e = failure("cannot commit");
    // A failed COMMIT may leave the transaction open (SQLITE_BUSY, a full disk): undone here.
    if (sqlite3_get_autocommit(db_) == 0) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return e;
  }
  return {};
}

Result<void> NodeStore::prune_nonces(std::int64_t now) {
  std::lock_guard lock(mutex_);
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db_, "DELETE FROM nonces WHERE expires <= ?1", -1, &s, nullptr) != SQLITE_OK) {
    return failure("cannot prune nonces");
  }
  sqlite3_bind_int64(s, 1, now);
  const int rc = sqlite3_step(s);
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) return failure("cannot prune nonces");
  return {};
}

Result<std::vector<NodeStore::Row>> NodeStore::load(Table table) {
  std::lock_guard lock(mutex_);
  const std::string sql = std::string("SELECT key, value FROM ") + table_name(table) + " ORDER BY key";
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) != SQLITE_OK) {
    return errors::invalid_argument(path_ + ": cannot read " + table_name(table) + ": " + sqlite3_errmsg(db_));
  }
  std::vector<Row> rows;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const auto* key = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    const auto* bytes = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, 1));
    const int n = sqlite3_column_bytes(s, 1);
    rows.emplace_back(std::string(key ? key : ""), std::vector<std::uint8_t>(bytes, bytes + n));
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) {
    return errors::invalid_argument(path_ + ": cannot read " + table_name(table) + ": " + sqlite3_errmsg(db_));
  }
  return rows;
}

}  // namespace sojourn
