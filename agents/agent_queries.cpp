// The agent protocol's queries from clients: an agent's status, the list of agents, waiting
// for and fetching a result (agent_messages.hpp); the hand-over's messages are in
// agent_messages.cpp, the shared codec pieces in agent_codec.hpp.
#include "agents/agent_codec.hpp"

namespace sojourn {

using namespace agent_codec;

AgentMessageBytes encode(const AgentStatus& m) {
  Writer w;
  start(w, AgentMessageKind::status_answer);
  w.string(m.id);
  w.string(m.home);
  w.string(m.owner);
  w.string(m.location);
  w.u64(m.epoch);
  write_state(w, m.status);
  w.string(m.reason);
  wire::write_value(w, m.result);
  write_hops(w, m.hops);
  write_strings(w, m.log);
  w.u64(m.pending_messages);
  return w.take();
}
Result<AgentStatus> decode_status(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::status_answer, [](Reader& r) {
    AgentStatus m;
    m.id = r.string();
    m.home = r.string();
    m.owner = r.string();
    m.location = r.string();
    m.epoch = r.u64();
    m.status = read_state(r);
    m.reason = r.string();
    m.result = wire::read_value(r);
    m.hops = read_hops(r);
    m.log = read_strings(r, "log line");
    m.pending_messages = r.u64();
    return m;
  });
}

AgentMessageBytes encode(const std::vector<AgentSummary>& m) {
  Writer w;
  start(w, AgentMessageKind::list_answer);
  w.u32(static_cast<std::uint32_t>(m.size()));
  for (const auto& a : m) {
    w.string(a.id);
    w.string(a.owner);
    w.string(a.home);
    w.u64(a.epoch);
    w.i64(a.since_unix_ms);
    w.u64(a.state_bytes);
    write_state(w, a.status);
    w.string(a.reason);
    w.string(a.isolation);
    w.string(a.mobility);
    w.u64(a.image_bytes);
  }
  return w.take();
}
Result<std::vector<AgentSummary>> decode_list(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::list_answer, [](Reader& r) {
    // Six lengths, four 8-byte fields and the state's byte.
    std::vector<AgentSummary> m(r.count(57, "agent"));
    for (auto& a : m) {
      a.id = r.string();
      a.owner = r.string();
      a.home = r.string();
      a.epoch = r.u64();
      a.since_unix_ms = r.i64();
      a.state_bytes = r.u64();
      a.status = read_state(r);
      a.reason = r.string();
      a.isolation = r.string();
      a.mobility = r.string();
      a.image_bytes = r.u64();
    }
    return m;
  });
}

AgentMessageBytes encode(const WaitQuery& m) {
  Writer w;
  start(w, AgentMessageKind::wait_query);
  w.string(m.id);
  w.u64(m.wait_ms);
  return w.take();
}
Result<WaitQuery> decode_wait_query(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::wait_query, [](Reader& r) {
    WaitQuery m;
    m.id = r.string();
    m.wait_ms = r.u64();
    return m;
  });
}

AgentMessageBytes encode(const FetchQuery& m) {
  Writer w;
  start(w, AgentMessageKind::fetch_query);
  w.string(m.module);
  w.string(m.hash);
  w.string(m.have);
  return w.take();
}
Result<FetchQuery> decode_fetch_query(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::fetch_query, [](Reader& r) {
    FetchQuery m;
    m.module = r.string();
    m.hash = r.string();
    m.have = r.string();
    return m;
  });
}

AgentMessageBytes encode(const FetchAnswer& m) {
  Writer w;
  start(w, AgentMessageKind::fetch_answer);
  w.string(m.hash);
  write_optional(w, m.bundle_bytes);
  return w.take();
}
Result<FetchAnswer> decode_fetch_answer(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::fetch_answer, [](Reader& r) {
    FetchAnswer m;
    m.hash = r.string();
    m.bundle_bytes = read_optional(r);
    return m;
  });
}

}  // namespace sojourn
