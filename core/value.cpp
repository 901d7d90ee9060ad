// Value graph operations: table access and cross-graph import (value_function.cpp has the
// function API, value_equal.cpp deep equality and the debug rendering).
#include "sojourn/core/value.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <unordered_map>

namespace sojourn {

using detail::Slot;
using detail::TableData;
using detail::FunctionRef;
using detail::TableRef;

namespace {

// A float key with an integral value is the integer key (Lua semantics).
Slot normalize_key(const Slot& key) {
  if (key.index() == 0) throw std::invalid_argument("table key is nil");
  if (const double* d = std::get_if<double>(&key)) {
    if (std::isnan(*d)) throw std::invalid_argument("table key is NaN");
    if (std::floor(*d) == *d && std::fabs(*d) < 9.2e18) return Slot{static_cast<std::int64_t>(*d)};
  }
  return key;
}

bool slot_key_equal(const Slot& a, const Slot& b) { return a == b; }

void erase_key(std::vector<std::pair<Slot, Slot>>& map, const Slot& k) {
  auto it = std::find_if(map.begin(), map.end(), [&](const auto& e) { return slot_key_equal(e.first, k); });
  if (it != map.end()) map.erase(it);
}

}  // namespace

Value Value::table() {
  Value v;
  v.graph_ = std::make_shared<detail::Graph>();
  v.graph_->tables.emplace_back();
  v.slot_ = TableRef{0};
  return v;
}

Value Value::array(std::initializer_list<Value> items) {
  Value t = table();
  // Without a nil item every item goes to the array part in order, as set() would put it:
  // placed there directly (one allocation, no key normalised or searched for per item).
  if (std::none_of(items.begin(), items.end(), [](const Value& item) { return item.is_nil(); })) {
    std::vector<Slot>& array = t.graph_->tables[0].array;
    array.reserve(items.size());
    for (const Value& item : items) {
      Slot s = t.import_slot(item);  // may grow the graph's tables: `array` is taken again
      t.graph_->tables[0].array.push_back(std::move(s));
    }
    return t;
  }
  std::int64_t i = 1;
  for (const Value& item : items) t.set(Value(i++), item);  // a nil item leaves a hole
  return t;
}

Value Value::new_table() const {
  if (!is_table() && !is_function()) throw std::logic_error("new_table() needs a table or function value");
  graph_->tables.emplace_back();
  return from_slot(graph_, TableRef{static_cast<std::uint32_t>(graph_->tables.size() - 1)});
}

Value Value::from_slot(std::shared_ptr<detail::Graph> graph, Slot slot) {
  Value v;
  if (slot.index() == 5 || slot.index() == 6) v.graph_ = std::move(graph);
  v.slot_ = std::move(slot);
  return v;
}

Value::Type Value::type() const noexcept { return static_cast<Type>(slot_.index()); }

std::string_view Value::type_name() const noexcept {
  switch (type()) {
    case Type::nil: return "nil";
    case Type::boolean: return "boolean";
    case Type::integer: return "integer";
    case Type::number: return "number";
    case Type::string: return "string";
    case Type::table: return "table";
    case Type::function: return "function";
  }
  return "?";
}

double Value::as_number() const {
  if (const auto* i = std::get_if<std::int64_t>(&slot_)) return static_cast<double>(*i);
  return std::get<double>(slot_);
}

TableData& Value::data() const {
  if (!is_table()) throw std::logic_error("not a table: " + std::string(type_name()));
  return graph_->tables[std::get<TableRef>(slot_).index];
}

bool Value::same_table(const Value& other) const noexcept {
  return is_table() && other.is_table() && graph_ == other.graph_ &&
         std::get<TableRef>(slot_) == std::get<TableRef>(other.slot_);
}

const void* Value::table_identity() const noexcept {
  if (!is_table()) return nullptr;
  return &graph_->tables[std::get<TableRef>(slot_).index];
}

namespace {

// Copies the part of one graph reachable from a slot into another, keeping sharing and
// cycles: each table, function and cell is copied once and referenced by its new index.
class GraphCopier {
 public:
  GraphCopier(const detail::Graph& src, detail::Graph& dst) : src_(src), dst_(dst) {}

  Slot copy(const Slot& root) {
    Slot out = map_slot(root);
    while (!tables_.pending.empty() || !functions_.pending.empty()) {
      if (!tables_.pending.empty()) {
        const std::uint32_t from = tables_.pending.back();
        tables_.pending.pop_back();
        TableData copy;
        copy.array.reserve(src_.tables[from].array.size());
        for (const Slot& s : src_.tables[from].array) copy.array.push_back(map_slot(s));
        copy.map.reserve(src_.tables[from].map.size());
        for (const auto& [k, val] : src_.tables[from].map) copy.map.emplace_back(map_slot(k), map_slot(val));
        dst_.tables[tables_.copied[from]] = std::move(copy);
      } else {
        const std::uint32_t from = functions_.pending.back();
        functions_.pending.pop_back();
        detail::FunctionData copy = src_.functions[from];
        for (std::uint32_t& cell : copy.upvalue_cells) cell = map_cell(cell);
        dst_.functions[functions_.copied[from]] = std::move(copy);
      }
    }
    return out;
  }

 private:
  struct Mapping {
    std::unordered_map<std::uint32_t, std::uint32_t> copied;
    std::vector<std::uint32_t> pending;
  };

  template <class Items>
  static std::uint32_t map_index(Mapping& m, Items& items, std::uint32_t from) {
    auto [it, inserted] = m.copied.try_emplace(from, 0);
    if (inserted) {
      items.emplace_back();
      it->second = static_cast<std::uint32_t>(items.size() - 1);
      m.pending.push_back(from);
    }
    return it->second;
  }

  // Cells hold slots only, so they are copied as soon as they are reached.
  std::uint32_t map_cell(std::uint32_t from) {
    auto [it, inserted] = cells_.try_emplace(from, 0);
    if (inserted) {
      dst_.cells.emplace_back();
      it->second = static_cast<std::uint32_t>(dst_.cells.size() - 1);
      const std::uint32_t to = it->second;
      Slot value = map_slot(src_.cells[from]);
      dst_.cells[to] = std::move(value);
      return to;
    }
    return it->second;
  }

  Slot map_slot(const Slot& s) {
    if (const auto* r = std::get_if<TableRef>(&s)) return TableRef{map_index(tables_, dst_.tables, r->index)};
    if (const auto* f = std::get_if<FunctionRef>(&s)) return FunctionRef{map_index(functions_, dst_.functions, f->index)};
    return s;
  }

  const detail::Graph& src_;
  detail::Graph& dst_;
  Mapping tables_, functions_;
  std::unordered_map<std::uint32_t, std::uint32_t> cells_;
};

}  // namespace

Slot Value::import_slot(const Value& v) const {
  if ((!v.is_table() && !v.is_function()) || v.graph_ == graph_) return v.slot_;
  return GraphCopier(*v.graph_, *graph_).copy(v.slot_);
}

Value Value::get(const Value& key) const {
  const TableData& t = data();
  // Only a float key is normalised (into a copy); any other key is looked up as it is,
  // without copying it (a string key was copied on every lookup).
  if (key.is_string()) {
    const std::string& name = key.as_string();
    for (const auto& [mk, mv] : t.map) {
      if (const std::string* s = std::get_if<std::string>(&mk); s && *s == name) return from_slot(graph_, mv);
    }
    return Value{};
  }
  Slot normalized;
  const Slot* k = &key.slot_;
  if (key.slot_.index() == 0 || key.slot_.index() == 3) {
    normalized = normalize_key(key.slot_);  // throws for nil and NaN
    k = &normalized;
  }
  if (const auto* i = std::get_if<std::int64_t>(k)) {
    if (*i >= 1 && static_cast<std::uint64_t>(*i) <= t.array.size()) return from_slot(graph_, t.array[*i - 1]);
  }
  if ((key.is_table() || key.is_function()) && key.graph_ != graph_) return Value{};  // a foreign one is never a key here
  for (const auto& [mk, mv] : t.map) {
    if (slot_key_equal(mk, *k)) return from_slot(graph_, mv);
  }
  return Value{};
}

void Value::set(const Value& key, const Value& value) {
  if ((key.is_table() || key.is_function()) && key.graph_ != graph_) {
    throw std::invalid_argument(std::string(key.type_name()) + " key from another graph");
  }
  Slot k = normalize_key(key.slot_);
  Slot v = import_slot(value);  // may grow graph_->tables: take the table reference after
  TableData& t = data();
  if (const auto* i = std::get_if<std::int64_t>(&k)) {
    if (*i >= 1 && static_cast<std::uint64_t>(*i) <= t.array.size()) {
      t.array[*i - 1] = std::move(v);
      while (!t.array.empty() && t.array.back().index() == 0) t.array.pop_back();
      return;
    }
    if (static_cast<std::uint64_t>(*i) == t.array.size() + 1 && v.index() != 0) {
      // Appending: drop a stale map entry for the same key, then pull in the keys that
      // now continue the sequence, so that the layout does not depend on insertion order.
      erase_key(t.map, k);
      t.array.push_back(std::move(v));
      while (!t.map.empty()) {
        Slot next{static_cast<std::int64_t>(t.array.size() + 1)};
        auto it = std::find_if(t.map.begin(), t.map.end(), [&](const auto& e) { return slot_key_equal(e.first, next); });
        if (it == t.map.end()) break;
        Slot moved = std::move(it->second);
        t.map.erase(it);
        t.array.push_back(std::move(moved));
      }
      return;
    }
  }
  for (auto it = t.map.begin(); it != t.map.end(); ++it) {
    if (slot_key_equal(it->first, k)) {
      if (v.index() == 0) t.map.erase(it);
      else it->second = std::move(v);
      return;
    }
  }
  if (v.index() != 0) t.map.emplace_back(std::move(k), std::move(v));
}

void Value::push(const Value& value) { set(Value(static_cast<std::int64_t>(length() + 1)), value); }

std::size_t Value::length() const { return data().array.size(); }

std::size_t Value::size() const {
  const TableData& t = data();
  std::size_t n = t.map.size();
  for (const Slot& s : t.array) n += s.index() != 0;
  return n;
}

}  // namespace sojourn
