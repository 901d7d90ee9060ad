// What a home keeps of the agents it tracks in the node's store (NodeOptions::data_dir,
// docs/reliability.md): each tracked agent is one row, rewritten whenever the home
// acknowledges a change (a launch, an arrival and its new token, an end and its result, a
// message accepted), and taken back at start-up, so a home answers agent.status and
// agent.wait for them after a crash and a restart.
#include "agents/agent_runtime.hpp"
#include "agents/store/node_store.hpp"

#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {

// The row's layout: a version byte, then fields each as a little-endian u64 or a
// u64-length-prefixed byte string.
constexpr std::uint8_t kTrackedVersion = 1;

void put_u64(std::vector<std::uint8_t>& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

void put_bytes(std::vector<std::uint8_t>& out, std::span<const std::uint8_t> bytes) {
  put_u64(out, bytes.size());
  out.insert(out.end(), bytes.begin(), bytes.end());
}

void put_text(std::vector<std::uint8_t>& out, const std::string& text) {
  // SAFETY: the string's bytes are read as unsigned bytes of the same size.
  put_bytes(out, std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

struct Reader {
  std::span<const std::uint8_t> in;
  bool ok = true;
  std::uint64_t u64() {
    if (in.size() < 8) {
      ok = false;
      return 0;
    }
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(in[static_cast<std::size_t>(i)]) << (8 * i);
    in = in.subspan(8);
    return v;
  }
  std::span<const std::uint8_t> bytes() {
    const std::uint64_t n = u64();
    if (!ok || n > in.size()) {
      ok = false;
      return {};
    }
    auto out = in.first(static_cast<std::size_t>(n));
    in = in.subspan(static_cast<std::size_t>(n));
    return out;
  }
  std::string text() {
    auto b = bytes();
    return std::string(b.begin(), b.end());
  }
};

}  // namespace

std::vector<std::uint8_t> AgentRuntime::encode_tracked(const Tracked& t) {
  std::vector<std::uint8_t> out{kTrackedVersion};
  put_bytes(out, encode(t.status));
  put_text(out, t.token);
  put_text(out, t.previous_token);
  put_text(out, t.holder_fingerprint);
  put_text(out, t.launcher);
  put_u64(out, static_cast<std::uint64_t>(t.ended_ms));
  put_u64(out, static_cast<std::uint64_t>(t.read_ms));
  // The undelivered messages, in order, as an arrival's answer carries them.
  put_bytes(out, encode(ArrivalAnswer{std::vector<ForwardedMessage>(t.pending.begin(), t.pending.end()), {}}));
  put_u64(out, t.message_ids.size());
  for (const auto& m : t.message_ids) put_text(out, m);
  return out;
}

Result<AgentRuntime::Tracked> AgentRuntime::decode_tracked(std::span<const std::uint8_t> bytes) {
  if (bytes.empty() || bytes[0] != kTrackedVersion) {
    return errors::invalid_argument("unknown layout " + std::to_string(bytes.empty() ? 0 : bytes[0]));
  }
  Reader r{bytes.subspan(1)};
  Tracked t;
  auto status = decode_status(r.bytes());
  if (!r.ok || !status) return errors::invalid_argument(status ? "truncated" : status.error().message);
  t.status = std::move(*status);
  t.token = r.text();
  t.previous_token = r.text();
  t.holder_fingerprint = r.text();
  t.launcher = r.text();
  t.ended_ms = static_cast<std::int64_t>(r.u64());
  t.read_ms = static_cast<std::int64_t>(r.u64());
  auto pending = decode_arrival_answer(r.bytes());
  if (!r.ok || !pending) return errors::invalid_argument(pending ? "truncated" : pending.error().message);
  t.pending.assign(pending->messages.begin(), pending->messages.end());
  const std::uint64_t ids = r.u64();
  for (std::uint64_t i = 0; r.ok && i < ids; ++i) t.message_ids.insert(r.text());
  if (!r.ok || !r.in.empty()) return errors::invalid_argument("truncated or trailing bytes");
  return t;
}

Result<void> AgentRuntime::persist_tracked(const std::string& id, const Tracked& t) {
  if (!store_) return {};
  return store_->put(NodeStore::Table::tracked, id, encode_tracked(t));
}

void AgentRuntime::forget_tracked(const std::string& id) {
  if (!store_) return;
  // A row left behind is forgotten at the next start's sweep: logged, nothing is lost.
  if (auto r = store_->erase(NodeStore::Table::tracked, id); !r) log_warn("agents", r.error().message);
}

Result<void> AgentRuntime::load_durable() {
  if (!store_) return {};
  auto rows = store_->load(NodeStore::Table::tracked);
  if (!rows) return rows.error();
  std::vector<std::string> to_forward;
  std::size_t running = 0;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, bytes] : *rows) {
      auto t = decode_tracked(bytes);
      if (!t) return errors::invalid_argument(store_->path() + ": tracked agent " + id + " does not decode: " + t.error().message);
      if (t->ended_ms != 0) due_.emplace(forget_at(*t), Due{id, 0, true});
      if (!t->status.done() && t->status.status != AgentState::stranded) {
        ++running;
        if (!t->pending.empty()) to_forward.push_back(id);
      }
      tracked_[id] = std::move(*t);
    }
    prune_locked(now_ms());  // what expired while the node was down goes now
  }
  for (const auto& id : to_forward) kick_forwarding(id);
  if (!rows->empty()) {
    log_info("agents", options_.name + ": home to " + std::to_string(rows->size()) + " agents from " + store_->path() + " (" +
                           std::to_string(running) + " not ended)");
  }
  return {};
}

}  // namespace sojourn
