// Deep equality of Value graphs (shape, contents and sharing) and the debug rendering.
#include <cmath>
#include <cstdio>
#include <string>
#include <unordered_map>

#include "sojourn/core/value.hpp"

namespace sojourn {

using detail::FunctionData;
using detail::FunctionRef;
using detail::Slot;
using detail::TableData;
using detail::TableRef;

namespace {

std::size_t count(const TableData& t) {
  std::size_t n = 0;
  for (const Slot& s : t.array) n += s.index() != 0;
  for (const auto& [k, v] : t.map) n += v.index() != 0;
  return n;
}

bool is_reference(const Slot& s) { return s.index() == 5 || s.index() == 6; }

// The value stored under a scalar key, whichever part of the table holds it.
const Slot* find_scalar(const TableData& t, const Slot& k) {
  if (const auto* i = std::get_if<std::int64_t>(&k)) {
    if (*i >= 1 && static_cast<std::uint64_t>(*i) <= t.array.size()) return &t.array[*i - 1];
  }
  for (const auto& [mk, mv] : t.map) {
    if (mk == k) return &mv;
  }
  return nullptr;
}

// A bijection between the items of one kind (tables, functions or cells) of two graphs.
struct Pairing {
  std::unordered_map<std::uint32_t, std::uint32_t> a_to_b, b_to_a;

  // 1: already paired with each other, 0: one is paired elsewhere, -1: both are new.
  int check(std::uint32_t a, std::uint32_t b) const {
    auto ia = a_to_b.find(a);
    auto ib = b_to_a.find(b);
    if (ia == a_to_b.end() && ib == b_to_a.end()) return -1;
    return ia != a_to_b.end() && ib != b_to_a.end() && ia->second == b && ib->second == a ? 1 : 0;
  }
  void pair(std::uint32_t a, std::uint32_t b) {
    a_to_b[a] = b;
    b_to_a[b] = a;
  }
};

struct EqualWalker {
  const detail::Graph* ga;
  const detail::Graph* gb;
  Pairing tables_, functions_, cells_;

  bool slots(const Slot& a, const Slot& b) {
    const auto* ra = std::get_if<TableRef>(&a);
    const auto* rb = std::get_if<TableRef>(&b);
    if (ra || rb) return ra && rb && tables(ra->index, rb->index);
    const auto* fa = std::get_if<FunctionRef>(&a);
    const auto* fb = std::get_if<FunctionRef>(&b);
    if (fa || fb) return fa && fb && functions(fa->index, fb->index);
    // NaN equals NaN here: this is equality of shape and content, for round trips.
    if (a.index() == 3 && b.index() == 3 && std::isnan(std::get<double>(a)) && std::isnan(std::get<double>(b))) return true;
    if (a.index() != b.index()) {
      bool na = a.index() == 2 || a.index() == 3, nb = b.index() == 2 || b.index() == 3;
      if (!na || !nb) return false;
      return Value::from_slot(nullptr, a).as_number() == Value::from_slot(nullptr, b).as_number();
    }
    return a == b;
  }

  bool functions(std::uint32_t a, std::uint32_t b) {
    if (const int known = functions_.check(a, b); known >= 0) return known == 1;
    functions_.pair(a, b);
    const FunctionData& fa = ga->functions[a];
    const FunctionData& fb = gb->functions[b];
    if (fa.source != fb.source || fa.library_name != fb.library_name || fa.upvalue_names != fb.upvalue_names ||
        fa.upvalue_cells.size() != fb.upvalue_cells.size()) {
      return false;
    }
    for (std::size_t i = 0; i < fa.upvalue_cells.size(); ++i) {
      const std::uint32_t ca = fa.upvalue_cells[i], cb = fb.upvalue_cells[i];
      const int known = cells_.check(ca, cb);
      if (known == 0) return false;
      if (known == 1) continue;
      cells_.pair(ca, cb);
      if (!slots(ga->cells[ca], gb->cells[cb])) return false;
    }
    return true;
  }

  // True when reference keys ka and kb are (or can become) each other's counterpart.
  bool keys_match(const Slot& ka, const Slot& kb) {
    if (ka.index() != kb.index()) return false;
    const bool table = ka.index() == 5;
    const std::uint32_t ia = table ? std::get<TableRef>(ka).index : std::get<FunctionRef>(ka).index;
    const std::uint32_t ib = table ? std::get<TableRef>(kb).index : std::get<FunctionRef>(kb).index;
    const int known = (table ? tables_ : functions_).check(ia, ib);
    if (known >= 0) return known == 1;
    return table ? tables(ia, ib) : functions(ia, ib);
  }

  bool tables(std::uint32_t a, std::uint32_t b) {
    if (const int known = tables_.check(a, b); known >= 0) return known == 1;
    tables_.pair(a, b);
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
      if (!is_reference(ka)) {
        const Slot* vb = find_scalar(tb, ka);
        if (!vb || !slots(va, *vb)) return false;
        continue;
      }
      // A reference key matches the one the pairing so far gives it (or a fresh one).
      bool found = false;
      for (const auto& [kb, vb] : tb.map) {
        if (!is_reference(kb) || !keys_match(ka, kb)) continue;
        if (!slots(va, vb)) return false;
        found = true;
        break;
      }
      if (!found) return false;
    }
    return true;
  }
};

std::string chunk_display(const std::string& chunk_name) {
  if (!chunk_name.empty() && (chunk_name[0] == '=' || chunk_name[0] == '@')) return chunk_name.substr(1);
  return chunk_name;
}

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
    case Value::Type::function:
      out += "function<";
      if (!v.library_name().empty()) {
        out += v.library_name();
      } else {
        out += chunk_display(v.function_chunk_name()).substr(0, 60);
        out += ':' + std::to_string(v.function_line());
      }
      out += '>';
      break;
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

bool deep_equal(const Value& a, const Value& b) {
  EqualWalker w{a.graph().get(), b.graph().get(), {}, {}, {}};
  return w.slots(a.slot(), b.slot());
}

std::string to_debug_string(const Value& v, std::size_t max_len) {
  std::string out;
  render(v, out, max_len, 0);
  if (out.size() > max_len) out.resize(max_len), out += "...";
  return out;
}

}  // namespace sojourn
