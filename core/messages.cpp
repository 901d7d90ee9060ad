// Binary encoding of Values and of the request/reply messages.
#include "sojourn/core/messages.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <variant>

#include "core/wire_io.hpp"
#include "sojourn/core/frame.hpp"

namespace sojourn {

using detail::Slot;
using detail::FunctionRef;
using detail::TableRef;

namespace wire {
namespace {

enum SlotTag : std::uint8_t { tag_nil = 0, tag_false = 1, tag_true = 2, tag_integer = 3, tag_number = 4,
                              tag_string = 5, tag_table = 6, tag_function = 7 };

constexpr std::size_t kScalarSlots = 5;  // Slot's alternatives before TableRef: nil .. string

// A slot that is not a reference (index() < kScalarSlots).
template <class W>
void write_scalar(W& w, const Slot& s) {
  switch (s.index()) {
    case 0: w.u8(tag_nil); break;
    case 1: w.u8(*std::get_if<bool>(&s) ? tag_true : tag_false); break;
    case 2: w.u8(tag_integer); w.i64(*std::get_if<std::int64_t>(&s)); break;
    case 3: w.u8(tag_number); w.f64(*std::get_if<double>(&s)); break;
    case 4: w.u8(tag_string); w.string(*std::get_if<std::string>(&s)); break;
  }
}

bool all_scalars(const detail::TableData& t) {
  for (const Slot& s : t.array) {
    if (s.index() >= kScalarSlots) return false;
  }
  for (const auto& [k, v] : t.map) {
    if (k.index() >= kScalarSlots || v.index() >= kScalarSlots) return false;
  }
  return true;
}

// The values nearly every request and reply carries (a scalar; a table of scalars, such as
// the arguments {"k"} or a reply {x=1}) written as GraphWriter writes them, byte for byte,
// without numbering a graph: no allocation, no maps. False for anything else.
template <class W>
bool write_flat_value(W& w, const Value& v) {
  const Slot& root = v.slot();
  if (root.index() < kScalarSlots) {
    for (int i = 0; i < 4; ++i) w.u32(0);  // no tables, functions, cells or texts
    write_scalar(w, root);
    return true;
  }
  const detail::Graph* g = v.graph().get();
  const auto* ref = std::get_if<TableRef>(&root);
  if (!g || !ref || ref->index >= g->tables.size()) return false;
  const detail::TableData& t = g->tables[ref->index];
  if (!all_scalars(t)) return false;
  w.u32(1);  // the root, wire index 0
  w.u32(0);
  w.u32(0);
  w.u32(0);
  w.u8(tag_table);
  w.u32(0);
  w.u32(static_cast<std::uint32_t>(t.array.size()));
  for (const Slot& s : t.array) write_scalar(w, s);
  w.u32(static_cast<std::uint32_t>(t.map.size()));
  for (const auto& [k, val] : t.map) write_scalar(w, k), write_scalar(w, val);
  return true;
}

// Tables, functions and cells reachable from the root get wire indices in breadth-first
// order (each kind numbered on its own); the counts precede the items.
template <class W>
class GraphWriter {
 public:
  GraphWriter(W& w, const detail::Graph* g)
      : w_(w),
        g_(g),
        tables_(g ? g->tables.size() : 0),
        functions_(g ? g->functions.size() : 0),
        cells_(g ? g->cells.size() : 0) {}

  void write(const Slot& root) {
    visit(root);
    std::size_t t = 0, f = 0, c = 0;
    while (t < tables_.order.size() || f < functions_.order.size() || c < cells_.order.size()) {
      for (; t < tables_.order.size(); ++t) {
        const detail::TableData& table = g_->tables[tables_.order[t]];
        for (const Slot& s : table.array) visit(s);
        for (const auto& [k, v] : table.map) visit(k), visit(v);
      }
      for (; f < functions_.order.size(); ++f) {
        for (std::uint32_t cell : g_->functions[functions_.order[f]].upvalue_cells) cells_.index_of(cell);
      }
      for (; c < cells_.order.size(); ++c) visit(g_->cells[cells_.order[c]]);
    }
    // Texts (function sources and chunk names) are sent once and referenced by index.
    std::vector<const std::string*> texts;
    std::unordered_map<std::string_view, std::uint32_t> text_index;
    auto text_of = [&](const detail::SharedText& text) {
      auto [it, inserted] = text_index.try_emplace(text.str(), static_cast<std::uint32_t>(texts.size()));
      if (inserted) texts.push_back(&text.str());
      return it->second;
    };
    std::vector<std::pair<std::uint32_t, std::uint32_t>> function_texts;
    function_texts.reserve(functions_.order.size());
    for (std::uint32_t idx : functions_.order) {
      const detail::FunctionData& fn = g_->functions[idx];
      const std::uint32_t source = text_of(fn.source);
      function_texts.emplace_back(source, text_of(fn.chunk_name));
    }
    w_.u32(static_cast<std::uint32_t>(tables_.order.size()));
    w_.u32(static_cast<std::uint32_t>(functions_.order.size()));
    w_.u32(static_cast<std::uint32_t>(cells_.order.size()));
    w_.u32(static_cast<std::uint32_t>(texts.size()));
    slot(root);
    for (std::uint32_t idx : tables_.order) {
      const detail::TableData& table = g_->tables[idx];
      w_.u32(static_cast<std::uint32_t>(table.array.size()));
      for (const Slot& s : table.array) slot(s);
      w_.u32(static_cast<std::uint32_t>(table.map.size()));
      for (const auto& [k, v] : table.map) slot(k), slot(v);
    }
    for (const std::string* text : texts) w_.string(*text);
    for (std::size_t i = 0; i < functions_.order.size(); ++i) {
      const detail::FunctionData& fn = g_->functions[functions_.order[i]];
      w_.u32(function_texts[i].first);
      w_.u32(function_texts[i].second);
      w_.u32(fn.line);
      w_.string(fn.library_name);
      w_.u32(static_cast<std::uint32_t>(fn.upvalue_cells.size()));
      for (std::size_t u = 0; u < fn.upvalue_cells.size(); ++u) {
        w_.string(u < fn.upvalue_names.size() ? fn.upvalue_names[u] : std::string());
        w_.u32(cells_.at(fn.upvalue_cells[u]));
      }
    }
    for (std::uint32_t idx : cells_.order) slot(g_->cells[idx]);
  }

 private:
  // Wire indices by graph index. A small graph (every request's arguments and nearly every
  // reply) is numbered in an array inside the writer: no allocation, no hashing; a large
  // one in a map, so that sending a small part of it costs what that part has.
  class Numbering {
   public:
    explicit Numbering(std::size_t graph_items) : small_(graph_items <= kSmall) { small_index_.fill(kUnset); }
    std::vector<std::uint32_t> order;
    std::uint32_t index_of(std::uint32_t item) {
      const auto next = static_cast<std::uint32_t>(order.size());
      if (small_) {
        std::uint32_t& at = small_index_[item];
        if (at == kUnset) at = next, order.push_back(item);
        return at;
      }
      auto [it, inserted] = large_index_.try_emplace(item, next);
      if (inserted) order.push_back(item);
      return it->second;
    }
    // The wire index of an item numbered already.
    std::uint32_t at(std::uint32_t item) const { return small_ ? small_index_[item] : large_index_.at(item); }

   private:
    static constexpr std::size_t kSmall = 16;
    static constexpr std::uint32_t kUnset = ~std::uint32_t{0};
    bool small_;
    std::array<std::uint32_t, kSmall> small_index_;
    std::unordered_map<std::uint32_t, std::uint32_t> large_index_;
  };

  void visit(const Slot& s) {
    if (const auto* r = std::get_if<TableRef>(&s)) tables_.index_of(r->index);
    if (const auto* f = std::get_if<FunctionRef>(&s)) functions_.index_of(f->index);
  }
  void slot(const Slot& s) {
    switch (s.index()) {
      case 5: w_.u8(tag_table); w_.u32(tables_.at(std::get<TableRef>(s).index)); break;
      case 6: w_.u8(tag_function); w_.u32(functions_.at(std::get<FunctionRef>(s).index)); break;
      default: write_scalar(w_, s); break;
    }
  }

  W& w_;
  const detail::Graph* g_;
  Numbering tables_, functions_, cells_;
};

std::uint32_t checked_index(Reader& r, std::uint32_t count, const char* what) {
  std::uint32_t idx = r.u32();
  if (idx >= count) {
    throw DecodeError(std::string(what) + " reference " + std::to_string(idx) + " out of range (" +
                      std::to_string(count) + " " + what + "s)");
  }
  return idx;
}

struct GraphCounts {
  std::uint32_t tables = 0, functions = 0, cells = 0, texts = 0;
};

Slot read_slot(Reader& r, const GraphCounts& n) {
  std::uint8_t tag = r.u8();
  switch (tag) {
    case tag_nil: return Slot{};
    case tag_false: return Slot{false};
    case tag_true: return Slot{true};
    case tag_integer: return Slot{r.i64()};
    case tag_number: return Slot{r.f64()};
    case tag_string: return Slot{r.string()};
    case tag_table: return Slot{TableRef{checked_index(r, n.tables, "table")}};
    case tag_function: return Slot{FunctionRef{checked_index(r, n.functions, "function")}};
    default: throw DecodeError("unknown value tag " + std::to_string(tag));
  }
}

// A map key as Value::set leaves it, so that get, length and equality see the table the
// sender had: not nil or NaN, a float key only when not integral (else it is the integer),
// an integer key never one that the array part holds or would take next, and no key twice.
// A map no longer than this is checked for a key sent twice by comparing each key with the
// ones before it, without a set (most maps: a request's or a reply's few named fields).
constexpr std::uint32_t kPairwiseKeyCheck = 16;

void check_map_key(const Slot& k, std::size_t array_size) {
  if (k.index() == 0) throw DecodeError("nil table key");
  if (const double* d = std::get_if<double>(&k)) {
    if (*d != *d) throw DecodeError("NaN table key");
    if (std::floor(*d) == *d && std::fabs(*d) < 9.2e18) throw DecodeError("integral float table key");
  }
  if (const std::int64_t* i = std::get_if<std::int64_t>(&k); i && *i >= 1 && static_cast<std::uint64_t>(*i) <= array_size + 1) {
    throw DecodeError("table key " + std::to_string(*i) + " belongs to the array part");
  }
}

// Each key once, as Value::set keeps a table. Keys are never NaN nor an integral float
// (check_map_key), so two keys are the same exactly when the slots compare equal.
void check_key_unique(const Slot& k, std::span<const std::pair<Slot, Slot>> before,
                      std::unordered_set<std::string>* seen) {
  if (!seen) {
    for (const auto& [other, v] : before) {
      if (other == k) throw DecodeError("duplicate table key");
    }
    return;
  }
  std::string id(1, static_cast<char>(k.index()));
  std::visit([&](const auto& x) {
    using T = std::decay_t<decltype(x)>;
    if constexpr (std::is_same_v<T, std::string>) id += x;
    else if constexpr (std::is_same_v<T, TableRef> || std::is_same_v<T, FunctionRef>) id += std::to_string(x.index);
    else if constexpr (!std::is_same_v<T, std::monostate>) id.append(reinterpret_cast<const char*>(&x), sizeof x);  // SAFETY: a scalar's own bytes
  }, k);
  if (!seen->insert(std::move(id)).second) throw DecodeError("duplicate table key");
}

}  // namespace

template <class W>
void write_value(W& w, const Value& v) {
  if (write_flat_value(w, v)) return;
  GraphWriter<W> gw(w, v.graph().get());
  gw.write(v.slot());
}
template void write_value(Writer&, const Value&);
template void write_value(StringWriter&, const Value&);
template void write_value(SizeCounter&, const Value&);

Value read_value(Reader& r) {
  GraphCounts n;
  // Least wire sizes: a table is two counts, a function two text indices, a line, a
  // string and a count, a cell one tag, a text its length.
  n.tables = r.count(8, "table");
  n.functions = r.count(20, "function");
  n.cells = r.count(1, "cell");
  n.texts = r.count(4, "text");
  Slot root = read_slot(r, n);
  const bool reference = root.index() == 5 || root.index() == 6;
  if (n.tables == 0 && n.functions == 0 && n.cells == 0 && n.texts == 0) {
    if (reference) throw DecodeError("root refers to a table or function but none were sent");
    return Value::from_slot(nullptr, std::move(root));
  }
  if (!reference) throw DecodeError("tables or functions sent but the root is neither");
  auto graph = std::make_shared<detail::Graph>();
  graph->tables.resize(n.tables);
  for (std::uint32_t i = 0; i < n.tables; ++i) {
    detail::TableData& t = graph->tables[i];
    std::uint32_t count = r.count(1, "array item");
    t.array.reserve(count);
    for (std::uint32_t j = 0; j < count; ++j) t.array.push_back(read_slot(r, n));
    // Trailing holes would make length() disagree with the sender's border.
    if (!t.array.empty() && t.array.back().index() == 0) throw DecodeError("array part ends with nil");
    std::uint32_t m = r.count(2, "map entry");
    t.map.reserve(m);
    // Each key once: a map too long to compare pairwise keeps a set (made only for one).
    std::optional<std::unordered_set<std::string>> seen;
    if (m > kPairwiseKeyCheck) seen.emplace();
    for (std::uint32_t j = 0; j < m; ++j) {
      Slot k = read_slot(r, n);
      Slot v = read_slot(r, n);
      check_map_key(k, t.array.size());
      check_key_unique(k, t.map, seen ? &*seen : nullptr);
      t.map.emplace_back(std::move(k), std::move(v));
    }
  }
  // Shared, not copied, by the functions that name them: a big text named by many
  // functions costs its size once.
  std::vector<detail::SharedText> texts;
  texts.reserve(n.texts);
  for (std::uint32_t i = 0; i < n.texts; ++i) texts.emplace_back(r.string());
  graph->functions.resize(n.functions);
  for (std::uint32_t i = 0; i < n.functions; ++i) {
    detail::FunctionData& f = graph->functions[i];
    f.source = texts[checked_index(r, n.texts, "text")];
    f.chunk_name = texts[checked_index(r, n.texts, "text")];
    f.line = r.u32();
    f.library_name = r.string();
    std::uint32_t count = r.count(8, "upvalue");
    f.upvalue_names.reserve(count);
    f.upvalue_cells.reserve(count);
    for (std::uint32_t j = 0; j < count; ++j) {
      f.upvalue_names.push_back(r.string());
      f.upvalue_cells.push_back(checked_index(r, n.cells, "cell"));
    }
  }
  graph->cells.reserve(n.cells);
  for (std::uint32_t i = 0; i < n.cells; ++i) graph->cells.push_back(read_slot(r, n));
  return Value::from_slot(std::move(graph), std::move(root));
}

}  // namespace wire

namespace {

template <class F>
auto decode_with(std::span<const std::uint8_t> bytes, const char* what, F&& body) -> Result<decltype(body(std::declval<wire::Reader&>()))> {
  try {
    wire::Reader r(bytes);
    auto m = body(r);
    r.expect_end();
    return m;
  } catch (const wire::DecodeError& e) {
    return make_error(Errc::malformed_payload, std::string("malformed payload: ") + what + ": " + e.what());
  } catch (const std::exception& e) {  // wire::ShortRead: a field cut off
    return make_error(Errc::malformed_payload, std::string("malformed payload: ") + what + ": truncated");
  }
}

Errc read_errc(wire::Reader& r) { return static_cast<Errc>(r.u16()); }

Isolation read_isolation(wire::Reader& r) {
  std::uint8_t v = r.u8();
  if (v > static_cast<std::uint8_t>(Isolation::microvm)) throw wire::DecodeError("unknown isolation level " + std::to_string(v));
  return static_cast<Isolation>(v);
}

}  // namespace

std::string_view isolation_name(Isolation level) noexcept {
  switch (level) {
    case Isolation::trusted: return "trusted";
    case Isolation::process: return "process";
    case Isolation::microvm: return "microvm";
  }
  return "?";
}

Result<Isolation> parse_isolation(std::string_view name) {
  for (Isolation l : {Isolation::trusted, Isolation::process, Isolation::microvm}) {
    if (isolation_name(l) == name) return l;
  }
  return errors::invalid_argument("unknown isolation level '" + std::string(name) +
                                                "' (expected trusted, process or microvm)");
}

Limits effective_limits(const Limits& asked, const Limits& defaults, const Limits& ceiling) {
  auto pick = [](auto a, auto d, auto c) { auto v = a ? a : d; return c ? std::min(v, c) : v; };
  return Limits{pick(asked.cpu_instructions, defaults.cpu_instructions, ceiling.cpu_instructions),
                pick(asked.memory_bytes, defaults.memory_bytes, ceiling.memory_bytes),
                pick(asked.wall_ms, defaults.wall_ms, ceiling.wall_ms)};
}

namespace {
// A writer into a buffer this thread gave back (see take_small_buffer), if it has one.
wire::Writer pooled_writer() {
  std::vector<std::uint8_t> kept = take_small_buffer();
  if (kept.capacity() == 0) return wire::Writer();
  return wire::Writer(std::move(kept));
}
}  // namespace

std::vector<std::uint8_t> encode(const CallRequest& m) {
  wire::Writer w = pooled_writer();
  w.string(m.service);
  wire::write_value(w, m.args);
  return w.take();
}

std::vector<std::uint8_t> encode(const CallRequest& m, std::size_t args_bytes) {
  // A 4 KB state grew the buffer seven times (each a fresh allocation, a zero-fill and a copy
  // of what was written): ~12k instructions per TRANSFER. Sized once here; a wrong measure
  // only costs a growth (the writer checks its room for every field as always).
  std::vector<std::uint8_t> bytes;
  bytes.reserve(1 + 4 + m.service.size() + args_bytes);
  wire::Writer w(std::move(bytes));
  w.string(m.service);
  wire::write_value(w, m.args);
  return w.take();
}

void wire::write_eval_fields(Writer& w, const EvalRequest& m, bool with_signature) {
  w.string(m.source);
  w.string(m.chunk_name);
  write_value(w, m.args);
  write_limits(w, m.limits);
  w.u8(static_cast<std::uint8_t>(m.isolation));
  w.string(m.destination);
  w.string(m.signer);
  if (with_signature) w.string(m.signature);
  w.string(m.nonce);
  w.i64(m.expires_unix_ms);
}

std::vector<std::uint8_t> encode(const EvalRequest& m) {
  wire::Writer w = pooled_writer();
  wire::write_eval_fields(w, m, /*with_signature=*/true);
  return w.take();
}

std::vector<std::uint8_t> encode(const Reply& m) {
  wire::Writer w = pooled_writer();
  w.u16(static_cast<std::uint16_t>(m.code));
  w.string(m.message);
  wire::write_value(w, m.result);
  w.u8(static_cast<std::uint8_t>(m.isolation));
  return w.take();
}

std::vector<std::uint8_t> encode(const ProtocolError& m) {
  wire::Writer w;
  w.u16(static_cast<std::uint16_t>(m.code));
  w.string(m.message);
  return w.take();
}

std::vector<std::uint8_t> encode_value(const Value& v) {
  wire::Writer w;
  wire::write_value(w, v);
  return w.take();
}

Result<CallRequest> decode_call(std::span<const std::uint8_t> bytes) {
  return decode_with(bytes, "call request", [](wire::Reader& r) {
    CallRequest m;
    m.service = r.string();
    m.args = wire::read_value(r);
    return m;
  });
}

std::optional<std::string_view> peek_call_service(std::span<const std::uint8_t> bytes) {
  try {
    wire::Reader r(bytes);
    const std::span<const std::uint8_t> name = r.string_view();
    return std::string_view(reinterpret_cast<const char*>(name.data()), name.size());
  } catch (const std::exception&) {  // cut off before or inside the name
    return std::nullopt;
  }
}

Result<EvalRequest> decode_eval(std::span<const std::uint8_t> bytes) {
  // Decoded where the Result holds it (one per evaluation served): decode_with's way moved the
  // request twice on its way out (its six strings and its arguments, ~0.45k instructions).
  // Same fields, same checks, same errors.
  Result<EvalRequest> out;
  try {
    wire::Reader r(bytes);
    EvalRequest& m = *out;
    m.source = r.string();
    m.chunk_name = r.string();
    m.args = wire::read_value(r);
    m.limits = wire::read_limits(r);
    m.isolation = read_isolation(r);
    m.destination = r.string();
    m.signer = r.string();
    m.signature = r.string();
    m.nonce = r.string();
    m.expires_unix_ms = r.i64();
    r.expect_end();
  } catch (const wire::DecodeError& e) {
    out = make_error(Errc::malformed_payload, std::string("malformed payload: eval request: ") + e.what());
  } catch (const std::exception& e) {  // wire::ShortRead: a field cut off
    out = make_error(Errc::malformed_payload, "malformed payload: eval request: truncated");
  }
  return out;
}

Result<Reply> decode_reply(std::span<const std::uint8_t> bytes) {
  return decode_with(bytes, "reply", [](wire::Reader& r) {
    Reply m;
    m.code = read_errc(r);
    m.message = r.string();
    m.result = wire::read_value(r);
    m.isolation = read_isolation(r);
    return m;
  });
}

Result<Value> decode_call_reply(std::span<const std::uint8_t> bytes, bool& malformed) {
  malformed = false;
  std::optional<Error> carried;
  Result<Value> result = decode_with(bytes, "reply", [&carried](wire::Reader& r) {
    const Errc code = read_errc(r);
    if (code == Errc::ok) {
      (void)r.string_view();  // an ok reply's message: read past, not kept
    } else {
      carried.emplace(Error{code, r.string()});
    }
    Value value = wire::read_value(r);
    read_isolation(r);
    return value;
  });
  if (!result) {
    malformed = true;
    return result;
  }
  if (carried) return std::move(*carried);
  return result;
}

Result<ProtocolError> decode_protocol_error(std::span<const std::uint8_t> bytes) {
  return decode_with(bytes, "protocol error", [](wire::Reader& r) {
    ProtocolError m;
    m.code = read_errc(r);
    m.message = r.string();
    return m;
  });
}

Result<Value> decode_value(std::span<const std::uint8_t> bytes) {
  return decode_with(bytes, "value", [](wire::Reader& r) { return wire::read_value(r); });
}

Reply reply_ok(Value result) {
  Reply r;
  r.result = std::move(result);
  return r;
}

Reply reply_error(const Error& error) {
  Reply r;
  r.code = error.code;
  r.message = error.message;
  return r;
}

}  // namespace sojourn
