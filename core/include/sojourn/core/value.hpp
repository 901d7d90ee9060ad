// Value: the data that crosses the wire and the Lua boundary. Scalars, strings and
// tables; tables may share references and form cycles, so a Value lives in a Graph
// (one arena of tables) and table references are indices into it: no reference
// counting between tables, no leaks with cycles.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace sojourn {

class Value;

namespace detail {
struct Graph;
struct TableRef {
  std::uint32_t index;
  friend bool operator==(TableRef, TableRef) = default;
};
// A slot is a value without its graph: what a table stores.
using Slot = std::variant<std::monostate, bool, std::int64_t, double, std::string, TableRef>;
struct TableData {
  std::vector<Slot> array;                        // keys 1..n (nil slots are holes)
  std::vector<std::pair<Slot, Slot>> map;         // every other key, insertion order
};
struct Graph {
  std::vector<TableData> tables;
};
}  // namespace detail

class Value {
 public:
  enum class Type : std::uint8_t { nil, boolean, integer, number, string, table };

  Value() = default;
  Value(std::nullptr_t) {}                                   // NOLINT: nil
  Value(bool b) : slot_(b) {}                                // NOLINT
  Value(int i) : slot_(std::int64_t{i}) {}                   // NOLINT
  Value(std::int64_t i) : slot_(i) {}                        // NOLINT
  Value(double d) : slot_(d) {}                              // NOLINT
  Value(std::string s) : slot_(std::move(s)) {}              // NOLINT
  Value(std::string_view s) : slot_(std::string(s)) {}       // NOLINT
  Value(const char* s) : slot_(std::string(s)) {}            // NOLINT

  // A new empty table in a new graph.
  static Value table();
  // A new array table {v1, v2, ...} (keys 1..n).
  static Value array(std::initializer_list<Value> items);
  // A new empty table in the same graph as this table, so that the two can reference
  // each other (shared references, cycles) without copying. Requires is_table().
  Value new_table() const;

  Type type() const noexcept;
  std::string_view type_name() const noexcept;
  bool is_nil() const noexcept { return slot_.index() == 0; }
  bool is_bool() const noexcept { return slot_.index() == 1; }
  bool is_integer() const noexcept { return slot_.index() == 2; }
  bool is_number() const noexcept { return slot_.index() == 2 || slot_.index() == 3; }
  bool is_string() const noexcept { return slot_.index() == 4; }
  bool is_table() const noexcept { return slot_.index() == 5; }

  // Accessors throw std::bad_variant_access (or std::logic_error) on the wrong type.
  bool as_bool() const { return std::get<bool>(slot_); }
  std::int64_t as_integer() const { return std::get<std::int64_t>(slot_); }
  double as_number() const;  // integer or number
  const std::string& as_string() const { return std::get<std::string>(slot_); }

  // Lua truthiness: everything but nil and false.
  bool truthy() const noexcept { return !is_nil() && !(is_bool() && !as_bool()); }

  // Table operations; they throw std::logic_error when this is not a table, and
  // std::invalid_argument for a nil or NaN key. Float keys with an integral value are
  // the same key as the integer (Lua semantics).
  Value get(const Value& key) const;
  // Setting nil removes the key. A table from another graph is deep-copied in (its
  // sharing and cycles kept); one from this graph is referenced.
  void set(const Value& key, const Value& value);
  // Append at length()+1.
  void push(const Value& value);
  // The length of the array part without trailing holes (a Lua border).
  std::size_t length() const;
  // The number of non-nil entries.
  std::size_t size() const;
  // Calls f(key, value) for each non-nil entry: the array part in order, then the rest
  // in insertion order.
  template <class F>
  void for_each(F&& f) const;

  // True when both are the same table of the same graph (identity, not contents).
  bool same_table(const Value& other) const noexcept;
  // An identity for the table (stable while the value lives), for visited-sets.
  const void* table_identity() const noexcept;

  // Internal access for codecs and the Lua bridge.
  const detail::Slot& slot() const noexcept { return slot_; }
  const std::shared_ptr<detail::Graph>& graph() const noexcept { return graph_; }
  static Value from_slot(std::shared_ptr<detail::Graph> graph, detail::Slot slot);

 private:
  detail::TableData& data() const;
  detail::Slot import_slot(const Value& v) const;  // v as a slot of this table's graph

  std::shared_ptr<detail::Graph> graph_;  // set only for tables
  detail::Slot slot_;
};

// Structural equality that follows shared references and cycles: two graphs are equal
// when they have the same shape, including which tables are shared. Integers and
// numbers compare by value (1 == 1.0), and NaN equals NaN.
bool deep_equal(const Value& a, const Value& b);

// A short human-readable rendering for logs and the CLI (not JSON).
std::string to_debug_string(const Value& v, std::size_t max_len = 200);

template <class F>
void Value::for_each(F&& f) const {
  const detail::TableData& t = data();
  for (std::size_t i = 0; i < t.array.size(); ++i) {
    if (t.array[i].index() == 0) continue;
    f(Value(static_cast<std::int64_t>(i + 1)), from_slot(graph_, t.array[i]));
  }
  for (const auto& [k, v] : t.map) {
    if (v.index() == 0) continue;
    f(from_slot(graph_, k), from_slot(graph_, v));
  }
}

}  // namespace sojourn
