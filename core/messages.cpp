// Binary encoding of Values and of the request/reply messages.
#include "sojourn/core/messages.hpp"

#include <algorithm>
#include <unordered_map>

#include "wire_io.hpp"

namespace sojourn {

using detail::Slot;
using detail::TableRef;

namespace wire {
namespace {

enum SlotTag : std::uint8_t { tag_nil = 0, tag_false = 1, tag_true = 2, tag_integer = 3, tag_number = 4,
                              tag_string = 5, tag_table = 6 };

// Tables reachable from the root get wire indices in breadth-first order.
class GraphWriter {
 public:
  GraphWriter(Writer& w, const detail::Graph* g) : w_(w), g_(g) {}

  void write(const Slot& root) {
    if (const auto* r = std::get_if<TableRef>(&root)) index_of(r->index);
    // Number the reachable tables first: the count precedes the tables.
    for (std::size_t i = 0; i < order_.size(); ++i) {
      const detail::TableData& t = g_->tables[order_[i]];
      for (const Slot& s : t.array) visit(s);
      for (const auto& [k, v] : t.map) visit(k), visit(v);
    }
    w_.u32(static_cast<std::uint32_t>(order_.size()));
    slot(root);
    for (std::uint32_t idx : order_) {
      const detail::TableData& t = g_->tables[idx];
      w_.u32(static_cast<std::uint32_t>(t.array.size()));
      for (const Slot& s : t.array) slot(s);
      w_.u32(static_cast<std::uint32_t>(t.map.size()));
      for (const auto& [k, v] : t.map) slot(k), slot(v);
    }
  }

 private:
  std::uint32_t index_of(std::uint32_t table) {
    auto [it, inserted] = wire_index_.try_emplace(table, static_cast<std::uint32_t>(order_.size()));
    if (inserted) order_.push_back(table);
    return it->second;
  }
  void visit(const Slot& s) {
    if (const auto* r = std::get_if<TableRef>(&s)) index_of(r->index);
  }
  void slot(const Slot& s) {
    switch (s.index()) {
      case 0: w_.u8(tag_nil); break;
      case 1: w_.u8(std::get<bool>(s) ? tag_true : tag_false); break;
      case 2: w_.u8(tag_integer); w_.i64(std::get<std::int64_t>(s)); break;
      case 3: w_.u8(tag_number); w_.f64(std::get<double>(s)); break;
      case 4: w_.u8(tag_string); w_.string(std::get<std::string>(s)); break;
      case 5: w_.u8(tag_table); w_.u32(wire_index_.at(std::get<TableRef>(s).index)); break;
    }
  }

  Writer& w_;
  const detail::Graph* g_;
  std::vector<std::uint32_t> order_;
  std::unordered_map<std::uint32_t, std::uint32_t> wire_index_;
};

Slot read_slot(Reader& r, std::uint32_t table_count) {
  std::uint8_t tag = r.u8();
  switch (tag) {
    case tag_nil: return Slot{};
    case tag_false: return Slot{false};
    case tag_true: return Slot{true};
    case tag_integer: return Slot{r.i64()};
    case tag_number: return Slot{r.f64()};
    case tag_string: return Slot{r.string()};
    case tag_table: {
      std::uint32_t idx = r.u32();
      if (idx >= table_count) {
        throw DecodeError("table reference " + std::to_string(idx) + " out of range (" +
                          std::to_string(table_count) + " tables)");
      }
      return Slot{TableRef{idx}};
    }
    default: throw DecodeError("unknown value tag " + std::to_string(tag));
  }
}

}  // namespace

void write_value(Writer& w, const Value& v) {
  GraphWriter gw(w, v.graph().get());
  gw.write(v.slot());
}

Value read_value(Reader& r) {
  // Each table takes at least 8 bytes (two counts).
  std::uint32_t table_count = r.count(8, "table");
  Slot root = read_slot(r, table_count);
  if (table_count == 0) {
    if (root.index() == 5) throw DecodeError("root refers to a table but none were sent");
    return Value::from_slot(nullptr, std::move(root));
  }
  if (root.index() != 5) throw DecodeError("tables sent but the root is not a table");
  auto graph = std::make_shared<detail::Graph>();
  graph->tables.resize(table_count);
  for (std::uint32_t i = 0; i < table_count; ++i) {
    detail::TableData& t = graph->tables[i];
    std::uint32_t n = r.count(1, "array item");
    t.array.reserve(n);
    for (std::uint32_t j = 0; j < n; ++j) t.array.push_back(read_slot(r, table_count));
    // Trailing holes would make length() disagree with the sender's border.
    if (!t.array.empty() && t.array.back().index() == 0) throw DecodeError("array part ends with nil");
    std::uint32_t m = r.count(2, "map entry");
    t.map.reserve(m);
    for (std::uint32_t j = 0; j < m; ++j) {
      Slot k = read_slot(r, table_count);
      Slot v = read_slot(r, table_count);
      if (k.index() == 0) throw DecodeError("nil table key");
      if (const double* d = std::get_if<double>(&k); d && *d != *d) throw DecodeError("NaN table key");
      t.map.emplace_back(std::move(k), std::move(v));
    }
  }
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
  } catch (const std::exception& e) {  // cereal::Exception on a short read
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
  return make_error(Errc::invalid_argument, "invalid argument: unknown isolation level '" + std::string(name) +
                                                "' (expected trusted, process or microvm)");
}

Limits effective_limits(const Limits& asked, const Limits& defaults, const Limits& ceiling) {
  auto pick = [](auto a, auto d, auto c) { auto v = a ? a : d; return c ? std::min(v, c) : v; };
  return Limits{pick(asked.cpu_instructions, defaults.cpu_instructions, ceiling.cpu_instructions),
                pick(asked.memory_bytes, defaults.memory_bytes, ceiling.memory_bytes),
                pick(asked.wall_ms, defaults.wall_ms, ceiling.wall_ms)};
}

std::vector<std::uint8_t> encode(const CallRequest& m) {
  wire::Writer w;
  w.string(m.service);
  wire::write_value(w, m.args);
  return w.take();
}

std::vector<std::uint8_t> encode(const EvalRequest& m) {
  wire::Writer w;
  w.string(m.source);
  w.string(m.chunk_name);
  wire::write_value(w, m.args);
  w.u64(m.limits.cpu_instructions);
  w.u64(m.limits.memory_bytes);
  w.u32(m.limits.wall_ms);
  w.u8(static_cast<std::uint8_t>(m.isolation));
  return w.take();
}

std::vector<std::uint8_t> encode(const Reply& m) {
  wire::Writer w;
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

Result<EvalRequest> decode_eval(std::span<const std::uint8_t> bytes) {
  return decode_with(bytes, "eval request", [](wire::Reader& r) {
    EvalRequest m;
    m.source = r.string();
    m.chunk_name = r.string();
    m.args = wire::read_value(r);
    m.limits.cpu_instructions = r.u64();
    m.limits.memory_bytes = r.u64();
    m.limits.wall_ms = r.u32();
    m.isolation = read_isolation(r);
    return m;
  });
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
