// The agent protocol codec's shared pieces: the message header (kind, version), the
// bounded decoding of a message (decode_as) and the fields several messages carry. Internal
// to agent_messages.cpp (the hand-over between nodes) and agent_queries.cpp (what clients
// ask a node about its agents); includes Cereal through core/wire_io.hpp.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agents/agent_messages.hpp"
#include "core/wire_io.hpp"

namespace sojourn::agent_codec {


using wire::DecodeError;
using wire::Reader;
using wire::StringWriter;
using wire::Writer;

inline constexpr const char* kKindNames[] = {
    "?",           "launch",      "launch answer",  "protocol 3 offer", "protocol 3 offer answer",
    "transfer",    "commit",      "arrival",        "arrival answer",   "end report",
    "send",        "send answer", "deliver",        "status",           "list",
    "wait query",  "fetch query", "fetch answer",   "image part",       "bundle wanted"};
static_assert(std::size(kKindNames) == static_cast<std::size_t>(AgentMessageKind::bundle_wanted) + 1);

inline const char* kind_name(AgentMessageKind kind) { return kKindNames[static_cast<std::size_t>(kind)]; }

template <class W>
inline void start(W& w, AgentMessageKind kind) {
  w.u8(static_cast<std::uint8_t>(kind));
  w.u8(kAgentProtocolVersion);
}

template <class W>
inline void write_strings(W& w, const std::vector<std::string>& items) {
  w.u32(static_cast<std::uint32_t>(items.size()));
  for (const auto& s : items) w.string(s);
}
inline std::vector<std::string> read_strings(Reader& r, const char* what) {
  std::vector<std::string> out(r.count(4, what));  // each string has its u32 length
  for (auto& s : out) s = r.string();
  return out;
}

template <class W>
inline void write_optional(W& w, const std::optional<std::string>& s) {
  w.u8(s ? 1 : 0);
  if (s) w.string(*s);
}
inline std::optional<std::string> read_optional(Reader& r) {
  const std::uint8_t present = r.u8();
  if (present > 1) throw DecodeError("bad presence flag " + std::to_string(present));
  if (present == 0) return std::nullopt;
  return r.string();
}

template <class W>
inline void write_state(W& w, AgentState s) { w.u8(static_cast<std::uint8_t>(s)); }
inline AgentState read_state(Reader& r) {
  const std::uint8_t v = r.u8();
  if (v > static_cast<std::uint8_t>(kLastAgentState)) throw DecodeError("unknown agent state " + std::to_string(v));
  return static_cast<AgentState>(v);
}
template <class W>
inline void write_mobility(W& w, Mobility m) { w.u8(static_cast<std::uint8_t>(m)); }
inline Mobility read_mobility(Reader& r) {
  const std::uint8_t v = r.u8();
  if (v > static_cast<std::uint8_t>(Mobility::strong)) throw DecodeError("unknown mobility " + std::to_string(v));
  return static_cast<Mobility>(v);
}

// A state that this message may not carry (a finished arrival, a running end).
inline void expect_state(AgentState s, AgentState a, AgentState b) {
  if (s != a && s != b) throw DecodeError("agent state " + std::string(agent_state_name(s)) + " is not allowed here");
}

template <class W>
inline void write_hops(W& w, const std::vector<AgentHop>& hops) {
  w.u32(static_cast<std::uint32_t>(hops.size()));
  for (const auto& h : hops) {
    w.string(h.node);
    w.u64(h.epoch);
    w.i64(h.arrived_unix_ms);
    w.i64(h.spent_ms);
    w.u64(h.state_bytes);
    w.string(h.isolation);
    w.string(h.mobility);
    w.u64(h.image_raw_bytes);
    w.u64(h.image_bytes);
    w.u64(h.image_us);
    w.u64(h.restore_us);
  }
}
inline std::vector<AgentHop> read_hops(Reader& r) {
  std::vector<AgentHop> hops(r.count(76, "hop"));  // three lengths and eight 8-byte fields
  for (auto& h : hops) {
    h.node = r.string();
    h.epoch = r.u64();
    h.arrived_unix_ms = r.i64();
    h.spent_ms = r.i64();
    h.state_bytes = r.u64();
    h.isolation = r.string();
    h.mobility = r.string();
    h.image_raw_bytes = r.u64();
    h.image_bytes = r.u64();
    h.image_us = r.u64();
    h.restore_us = r.u64();
  }
  return hops;
}

template <class W>
inline void write_forwarded(W& w, const ForwardedMessage& m) {
  w.string(m.message_id);
  wire::write_value(w, m.body);
}
inline ForwardedMessage read_forwarded(Reader& r) {
  ForwardedMessage m;
  m.message_id = r.string();
  m.body = wire::read_value(r);
  return m;
}

// Checks the kind and version, runs `body`, and turns any failure into invalid_argument.
template <class F>
auto decode_as(std::span<const std::uint8_t> bytes, AgentMessageKind kind, F&& body)
    -> Result<decltype(body(std::declval<Reader&>()))> {
  const std::string what = std::string("bad agent message: ") + kind_name(kind) + ": ";
  try {
    Reader r(bytes);
    const std::uint8_t got = r.u8();
    if (got != static_cast<std::uint8_t>(kind)) {
      const bool known = got >= 1 && got <= static_cast<std::uint8_t>(AgentMessageKind::bundle_wanted);
      throw DecodeError(known ? std::string("got a ") + kind_name(static_cast<AgentMessageKind>(got))
                              : "unknown message kind " + std::to_string(got));
    }
    const std::uint8_t version = r.u8();
    if (version != kAgentProtocolVersion) {
      throw DecodeError("agent protocol version " + std::to_string(version) + " (this node speaks " +
                        std::to_string(kAgentProtocolVersion) + ")");
    }
    auto m = body(r);
    r.expect_end();
    return m;
  } catch (const DecodeError& e) {
    return errors::invalid_argument(what + e.what());
  } catch (const std::exception&) {  // cereal::Exception on a short read
    return errors::invalid_argument(what + "truncated");
  }
}


}  // namespace sojourn::agent_codec
