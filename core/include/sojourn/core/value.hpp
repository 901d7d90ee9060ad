// Value: the data that crosses the wire and the Lua boundary. Scalars, strings, tables
// and Lua functions; tables and functions may share references and form cycles, so a
// Value lives in a Graph (one arena of tables, functions and captured-variable cells)
// and references are indices into it: no reference counting, no leaks with cycles.
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
struct FunctionRef {
  std::uint32_t index;
  friend bool operator==(FunctionRef, FunctionRef) = default;
};
// A slot is a value without its graph: what a table or a cell stores.
using Slot = std::variant<std::monostate, bool, std::int64_t, double, std::string, TableRef, FunctionRef>;
struct TableData {
  std::vector<Slot> array;                        // keys 1..n (nil slots are holes)
  std::vector<std::pair<Slot, Slot>> map;         // every other key, insertion order
};
// An immutable text shared by every function that has it (a thousand closures of one
// function hold one copy, in memory and on the wire).
class SharedText {
 public:
  SharedText() = default;
  SharedText(std::string text) : text_(std::make_shared<const std::string>(std::move(text))) {}  // NOLINT
  const std::string& str() const noexcept {
    static const std::string empty;
    return text_ ? *text_ : empty;
  }
  friend bool operator==(const SharedText& a, const SharedText& b) noexcept {
    return a.text_ == b.text_ || a.str() == b.str();
  }

 private:
  std::shared_ptr<const std::string> text_;
};

// A Lua function travels as the text of one function expression plus its upvalues. Each
// upvalue is a cell of the graph: functions that captured the same variable share it.
struct FunctionData {
  SharedText source;         // "function(x) ... end"; empty for a library function
  SharedText chunk_name;     // the chunk it was cut from ("=eval"), kept for messages
  std::uint32_t line = 1;    // the line of `function` in that chunk
  std::string library_name;  // "table.insert": resolved by name where it is rebuilt
  std::vector<std::string> upvalue_names;
  std::vector<std::uint32_t> upvalue_cells;  // indices into Graph::cells
};
struct Graph {
  std::vector<TableData> tables;
  std::vector<FunctionData> functions;
  std::vector<Slot> cells;
};
}  // namespace detail

class Value {
 public:
  enum class Type : std::uint8_t { nil, boolean, integer, number, string, table, function };

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
  // A new empty table in the same graph as this table or function, so that the two can
  // reference each other (shared references, cycles) without copying.
  Value new_table() const;

  // A Lua function from the text of one function expression ("function(a) return a end"),
  // without upvalues, in a new graph. `chunk_name` and `line` say where the text came
  // from ("=eval", line of `function`): a rebuilt function reports errors at those lines.
  // Nothing is checked here; the Lua side refuses anything but one function expression.
  static Value function(std::string source, std::string chunk_name = "=value", std::uint32_t line = 1);
  // A function of the destination's standard library, found there by name ("table.insert").
  static Value library_function(std::string name);
  // Like function(), in the same graph as this table or function.
  Value new_function(std::string source, std::string chunk_name = "=value", std::uint32_t line = 1) const;

  Type type() const noexcept;
  std::string_view type_name() const noexcept;
  bool is_nil() const noexcept { return slot_.index() == 0; }
  bool is_bool() const noexcept { return slot_.index() == 1; }
  bool is_integer() const noexcept { return slot_.index() == 2; }
  bool is_number() const noexcept { return slot_.index() == 2 || slot_.index() == 3; }
  bool is_string() const noexcept { return slot_.index() == 4; }
  bool is_table() const noexcept { return slot_.index() == 5; }
  bool is_function() const noexcept { return slot_.index() == 6; }

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

  // Function access; these throw std::logic_error when this is not a function, and
  // std::out_of_range for an upvalue index past upvalue_count().
  const std::string& function_source() const;      // empty for a library function
  const std::string& function_chunk_name() const;
  std::uint32_t function_line() const;
  const std::string& library_name() const;         // empty for a Lua function
  std::size_t upvalue_count() const;
  const std::string& upvalue_name(std::size_t i) const;
  Value upvalue(std::size_t i) const;              // the value its cell holds now
  // Adds upvalue `name` with a new cell holding `value` (imported as by set()); returns its
  // index. The upvalue names must be those the function's text uses as free names.
  std::size_t add_upvalue(std::string name, const Value& value);
  // Changes what upvalue i's cell holds: every function sharing the cell sees it.
  void set_upvalue(std::size_t i, const Value& value);
  // Makes upvalue i of this function share the cell of upvalue j of `other` (same graph).
  void join_upvalue(std::size_t i, const Value& other, std::size_t j);
  bool same_upvalue(std::size_t i, const Value& other, std::size_t j) const;

  // True when both are the same table of the same graph (identity, not contents).
  bool same_table(const Value& other) const noexcept;
  bool same_function(const Value& other) const noexcept;
  // An identity for the table (stable while the value lives), for visited-sets.
  const void* table_identity() const noexcept;

  // Internal access for codecs and the Lua bridge.
  const detail::Slot& slot() const noexcept { return slot_; }
  const std::shared_ptr<detail::Graph>& graph() const noexcept { return graph_; }
  static Value from_slot(std::shared_ptr<detail::Graph> graph, detail::Slot slot);

 private:
  detail::TableData& data() const;
  detail::FunctionData& function_data() const;
  std::uint32_t cell_of(std::size_t upvalue) const;
  detail::Slot import_slot(const Value& v) const;  // v as a slot of this table's graph

  std::shared_ptr<detail::Graph> graph_;  // set only for tables and functions
  detail::Slot slot_;
};

// Structural equality that follows shared references and cycles: two graphs are equal
// when they have the same shape, including which tables, functions and upvalue cells
// are shared. Functions compare by text, library name, upvalue names and upvalue values
// (not by chunk name or line). Integers and numbers compare by value (1 == 1.0), and
// NaN equals NaN.
bool deep_equal(const Value& a, const Value& b);

// A short human-readable rendering for logs and the CLI (not JSON); a function shows as
// function<eval:3> (where its text starts) or function<table.insert>.
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
