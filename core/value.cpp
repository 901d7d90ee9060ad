// Value graph operations: table access, cross-graph import, deep equality.
#include "sojourn/core/value.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <unordered_map>

namespace sojourn {

using detail::Slot;
using detail::TableData;
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

// The value stored under a scalar key, whichever part of the table holds it.
const Slot* find_scalar(const TableData& t, const Slot& k) {
  if (const auto* i = std::get_if<std::int64_t>(&k)) {
    if (*i >= 1 && static_cast<std::uint64_t>(*i) <= t.array.size()) return &t.array[*i - 1];
  }
  for (const auto& [mk, mv] : t.map) {
    if (slot_key_equal(mk, k)) return &mv;
  }
  return nullptr;
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
  std::int64_t i = 1;
  for (const Value& item : items) t.set(Value(i++), item);  // a nil item leaves a hole
  return t;
}

Value Value::new_table() const {
  if (!is_table()) throw std::logic_error("new_table() needs a table value");
  graph_->tables.emplace_back();
  return from_slot(graph_, TableRef{static_cast<std::uint32_t>(graph_->tables.size() - 1)});
}

Value Value::from_slot(std::shared_ptr<detail::Graph> graph, Slot slot) {
  Value v;
  if (slot.index() == 5) v.graph_ = std::move(graph);
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

Slot Value::import_slot(const Value& v) const {
  if (!v.is_table() || v.graph_ == graph_) return v.slot_;
  // Deep-copy the reachable part of v's graph into ours, keeping sharing and cycles.
  std::unordered_map<std::uint32_t, std::uint32_t> copied;
  const detail::Graph& src = *v.graph_;
  detail::Graph& dst = *graph_;
  std::vector<std::uint32_t> pending;
  auto map_ref = [&](std::uint32_t from) {
    auto [it, inserted] = copied.try_emplace(from, 0);
    if (inserted) {
      dst.tables.emplace_back();
      it->second = static_cast<std::uint32_t>(dst.tables.size() - 1);
      pending.push_back(from);
    }
    return it->second;
  };
  auto map_slot = [&](const Slot& s) -> Slot {
    if (const auto* r = std::get_if<TableRef>(&s)) return TableRef{map_ref(r->index)};
    return s;
  };
  std::uint32_t root = map_ref(std::get<TableRef>(v.slot_).index);
  while (!pending.empty()) {
    std::uint32_t from = pending.back();
    pending.pop_back();
    TableData copy;
    copy.array.reserve(src.tables[from].array.size());
    for (const Slot& s : src.tables[from].array) copy.array.push_back(map_slot(s));
    copy.map.reserve(src.tables[from].map.size());
    for (const auto& [k, val] : src.tables[from].map) copy.map.emplace_back(map_slot(k), map_slot(val));
    dst.tables[copied[from]] = std::move(copy);
  }
  return TableRef{root};
}

Value Value::get(const Value& key) const {
  const TableData& t = data();
  Slot k = normalize_key(key.slot_);
  if (const auto* i = std::get_if<std::int64_t>(&k)) {
    if (*i >= 1 && static_cast<std::uint64_t>(*i) <= t.array.size()) return from_slot(graph_, t.array[*i - 1]);
  }
  if (key.is_table() && key.graph_ != graph_) return Value{};  // a foreign table is never a key here
  for (const auto& [mk, mv] : t.map) {
    if (slot_key_equal(mk, k)) return from_slot(graph_, mv);
  }
  return Value{};
}

void Value::set(const Value& key, const Value& value) {
  if (key.is_table() && key.graph_ != graph_) throw std::invalid_argument("table key from another graph");
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

namespace {

std::size_t count(const TableData& t) {
  std::size_t n = 0;
  for (const Slot& s : t.array) n += s.index() != 0;
  for (const auto& [k, v] : t.map) n += v.index() != 0;
  return n;
}

struct EqualWalker {
  const detail::Graph* ga;
  const detail::Graph* gb;
  std::unordered_map<std::uint32_t, std::uint32_t> a_to_b, b_to_a;

  bool slots(const Slot& a, const Slot& b) {
    const auto* ra = std::get_if<TableRef>(&a);
    const auto* rb = std::get_if<TableRef>(&b);
    if (ra || rb) return ra && rb && tables(ra->index, rb->index);
    // NaN equals NaN here: this is equality of shape and content, for round trips.
    if (a.index() == 3 && b.index() == 3 && std::isnan(std::get<double>(a)) && std::isnan(std::get<double>(b))) return true;
    if (a.index() != b.index()) {
      bool na = a.index() == 2 || a.index() == 3, nb = b.index() == 2 || b.index() == 3;
      if (!na || !nb) return false;
      return Value::from_slot(nullptr, a).as_number() == Value::from_slot(nullptr, b).as_number();
    }
    return a == b;
  }

  bool tables(std::uint32_t a, std::uint32_t b) {
    auto ia = a_to_b.find(a);
    auto ib = b_to_a.find(b);
    if (ia != a_to_b.end() || ib != b_to_a.end()) {
      return ia != a_to_b.end() && ib != b_to_a.end() && ia->second == b && ib->second == a;
    }
    a_to_b[a] = b;
    b_to_a[b] = a;
    const TableData& ta = ga->tables[a];
    const TableData& tb = gb->tables[b];
    if (count(ta) != count(tb)) return false;
    // Compare entry by entry, whichever part (array or map) holds a key.
    for (std::size_t i = 0; i < ta.array.size(); ++i) {
      if (ta.array[i].index() == 0) continue;
      const Slot* vb = find_scalar(tb, Slot{static_cast<std::int64_t>(i + 1)});
      if (!vb || !slots(ta.array[i], *vb)) return false;
    }
    for (const auto& [ka, va] : ta.map) {
      if (va.index() == 0) continue;
      const auto* rka = std::get_if<TableRef>(&ka);
      if (!rka) {
        const Slot* vb = find_scalar(tb, ka);
        if (!vb || !slots(va, *vb)) return false;
        continue;
      }
      // A table key matches the table the mapping so far pairs it with (or a fresh one).
      bool found = false;
      for (const auto& [kb, vb] : tb.map) {
        const auto* rkb = std::get_if<TableRef>(&kb);
        if (!rkb) continue;
        auto m = a_to_b.find(rka->index);
        bool key_match = (m != a_to_b.end() && m->second == rkb->index) ||
                         (m == a_to_b.end() && b_to_a.find(rkb->index) == b_to_a.end() && tables(rka->index, rkb->index));
        if (key_match) {
          if (!slots(va, vb)) return false;
          found = true;
          break;
        }
      }
      if (!found) return false;
    }
    return true;
  }
};

}  // namespace

bool deep_equal(const Value& a, const Value& b) {
  if (!a.is_table() || !b.is_table()) {
    EqualWalker w{nullptr, nullptr, {}, {}};
    return w.slots(a.slot(), b.slot());
  }
  EqualWalker w{a.graph().get(), b.graph().get(), {}, {}};
  return w.slots(a.slot(), b.slot());
}

namespace {
void render(const Value& v, std::string& out, std::size_t max_len, int depth) {
  if (out.size() > max_len) return;
  switch (v.type()) {
    case Value::Type::nil: out += "nil"; break;
    case Value::Type::boolean: out += v.as_bool() ? "true" : "false"; break;
    case Value::Type::integer: out += std::to_string(v.as_integer()); break;
    case Value::Type::number: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", v.as_number());
      out += buf;
      break;
    }
    case Value::Type::string: out += '"' + v.as_string() + '"'; break;
    case Value::Type::table: {
      if (depth > 8) { out += "{...}"; break; }
      out += '{';
      bool first = true;
      v.for_each([&](const Value& k, const Value& val) {
        if (out.size() > max_len) return;
        if (!first) out += ", ";
        first = false;
        if (!(k.is_integer())) {
          if (k.is_string()) out += k.as_string();
          else render(k, out, max_len, depth + 1);
          out += '=';
        }
        render(val, out, max_len, depth + 1);
      });
      out += '}';
      break;
    }
  }
}
}  // namespace

std::string to_debug_string(const Value& v, std::size_t max_len) {
  std::string out;
  render(v, out, max_len, 0);
  if (out.size() > max_len) out.resize(max_len), out += "...";
  return out;
}

}  // namespace sojourn
