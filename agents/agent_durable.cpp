// What a node keeps of its agents in its store (NodeOptions::data_dir, docs/reliability.md).
// As a home: each tracked agent is one row, rewritten whenever the home acknowledges a change
// (a launch, an arrival and its new token, an end and its result, a message accepted), and
// taken back at start-up, so a home answers agent.status and agent.wait for them after a
// crash and a restart. As a host: each weak resident agent is one row (its record, status
// and, when moving, the hand-over it is in), run again from there after a restart, and each
// end report still owed to an agent's home, sent again. As a destination: the COMMITs and
// TRANSFER nonces it deduplicates with, taken back until they expire.
#include "agents/agent_runtime.hpp"
#include "agents/store/node_store.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/bundle.hpp"

#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {

// The row's layout: a version byte, then fields each as a little-endian u64 or a
// u64-length-prefixed byte string.
constexpr std::uint8_t kTrackedVersion = 1;
// Layout 2 adds a strong agent's heap image (empty for a weak agent, or a strong one whose
// next step starts its entry afresh); layout 1 rows (weak agents only) still load.
constexpr std::uint8_t kResidentVersion = 2;
constexpr std::uint8_t kResidentVersionWeakOnly = 1;
constexpr std::uint8_t kCommitVersion = 1;
constexpr std::uint8_t kEndVersion = 1;

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

// "ID/EPOCH", the epoch in 20 digits: an agent's commits side by side, in epoch order.
std::string commit_key(const std::string& id, std::uint64_t epoch) {
  std::string digits = std::to_string(epoch);
  return id + "/" + std::string(20 - std::min<std::size_t>(20, digits.size()), '0') + digits;
}

}  // namespace

NodeStore::Write AgentRuntime::commit_row(const std::string& id, std::uint64_t epoch, const AgentCommit& commit,
                                          std::int64_t forget_at_ms) {
  std::vector<std::uint8_t> row{kCommitVersion};
  put_u64(row, static_cast<std::uint64_t>(forget_at_ms));
  put_bytes(row, encode(commit));
  return NodeStore::Write{NodeStore::Table::commits, commit_key(id, epoch), std::move(row)};
}

NodeStore::Write AgentRuntime::commit_gone(const std::string& id, std::uint64_t epoch) {
  return NodeStore::Write{NodeStore::Table::commits, commit_key(id, epoch), std::nullopt};
}

NodeStore::Write AgentRuntime::nonce_row(const std::string& nonce, std::int64_t expires_unix_ms) {
  std::vector<std::uint8_t> row;
  put_u64(row, static_cast<std::uint64_t>(expires_unix_ms));
  return NodeStore::Write{NodeStore::Table::nonces, nonce, std::move(row), expires_unix_ms};
}

NodeStore::Write AgentRuntime::end_row(const std::string& home, const EndReport& report) {
  std::vector<std::uint8_t> row{kEndVersion};
  put_text(row, home);
  put_bytes(row, encode(report));
  return NodeStore::Write{NodeStore::Table::ends, report.id, std::move(row)};
}

void AgentRuntime::forget_end(const std::string& id) {
  if (!store_) return;
  // A row left behind is sent again after a restart and taken as a repeated report.
  if (auto r = store_->erase(NodeStore::Table::ends, id); !r) log_warn("agents", r.error().message);
}

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

std::vector<NodeStore::Write> AgentRuntime::resident_row(const std::string& id, const Resident& res,
                                                        const std::string& move_peer, const std::string& move_entry) {
  if (!store_) return {};
  std::vector<std::uint8_t> row{kResidentVersion};
  put_bytes(row, encode_value(record_to_value(res.record)));
  put_u64(row, static_cast<std::uint64_t>(res.status));
  put_text(row, res.reason);
  put_u64(row, res.rule != nullptr ? 1 : 0);
  put_text(row, res.rule != nullptr ? res.rule->name : std::string());
  put_text(row, move_peer);
  put_text(row, move_entry);
  // A strong agent's last image (its arrival's, its last agent.go or agent.checkpoint): raw
  // guest memory, checked against the record's image_sha256 when read back.
  static const std::vector<std::uint8_t> kNoImage;
  put_bytes(row, res.record.image ? *res.record.image : kNoImage);
  std::vector<NodeStore::Write> out;
  out.push_back(NodeStore::Write{NodeStore::Table::residents, id, std::move(row)});
  return out;
}

std::vector<NodeStore::Write> AgentRuntime::resident_gone(const std::string& id) {
  if (!store_) return {};
  std::vector<NodeStore::Write> out;
  out.push_back(NodeStore::Write{NodeStore::Table::residents, id, std::nullopt});
  return out;
}

Result<void> AgentRuntime::restore_image(AgentRecord& record, std::span<const std::uint8_t> image) {
  if (record.image_sha256.empty()) {
    if (!image.empty()) return errors::invalid_argument("its row holds a heap image its record does not name");
    return {};
  }
  if (record.mobility != Mobility::strong) return errors::invalid_argument("a weak agent's record names a heap image");
  if (image.empty()) return errors::invalid_argument("its record names heap image " + record.image_sha256.substr(0, 16) + " but the row holds none");
  if (!sandbox::image::has_digest(image, record.image_sha256)) {
    return make_error(Errc::hash_mismatch, "heap image hash mismatch: its record names " + record.image_sha256.substr(0, 16) +
                                               ", the stored image is " + sandbox::image::computed_digest_hex(image).substr(0, 16));
  }
  record.image = std::make_shared<const std::vector<std::uint8_t>>(image.begin(), image.end());
  // An image sealed by another guest build (the node was upgraded) cannot be resumed here.
  return check_image_build(record);
}

void AgentRuntime::persist_resident(const std::string& id, const Resident& res, const std::string& move_peer,
                                    const std::string& move_entry) {
  auto row = resident_row(id, res, move_peer, move_entry);
  if (row.empty()) return;
  if (auto r = store_->write(row); !r) log_error("agents", r.error().message);
}

void AgentRuntime::forget_resident(const std::string& id) {
  if (!store_) return;
  if (auto r = store_->erase(NodeStore::Table::residents, id); !r) log_error("agents", r.error().message);
}

Result<void> AgentRuntime::load_durable() {
  if (!store_) return {};
  // The dedup of hand-overs: COMMITs (and so the highest epochs) and nonces still in force.
  // What expired while the node was down goes from the store now.
  const std::int64_t now = now_ms();
  auto commits = store_->load(NodeStore::Table::commits);
  if (!commits) return commits.error();
  std::vector<NodeStore::Write> expired;
  {
    std::lock_guard lock(mutex_);
    for (auto& [key, bytes] : *commits) {
      Reader r{bytes};
      const bool known = !bytes.empty() && bytes[0] == kCommitVersion;
      if (known) r.in = r.in.subspan(1);
      const auto forget = static_cast<std::int64_t>(r.u64());
      auto commit = decode_commit(r.bytes());
      if (!known || !r.ok || !r.in.empty() || !commit) {
        return errors::invalid_argument(store_->path() + ": commit " + key + " does not decode: " +
                                        (commit || !known ? std::string(known ? "truncated or trailing bytes" : "unknown layout")
                                                          : commit.error().message));
      }
      if (forget <= now) {
        expired.push_back(NodeStore::Write{NodeStore::Table::commits, key, std::nullopt});
        continue;
      }
      commits_[{commit->id, commit->epoch}] = Commit{*commit, forget};
      HighestEpoch& h = highest_epoch_[commit->id];
      h.epoch = std::max(h.epoch, commit->epoch);
      h.forget_at_ms = std::max(h.forget_at_ms, forget);
      due_.emplace(forget, Due{commit->id, commit->epoch, false});
    }
  }
  if (auto pruned = store_->write(expired); !pruned) return pruned.error();
  auto nonces = store_->load(NodeStore::Table::nonces);
  if (!nonces) return nonces.error();
  for (auto& [nonce, bytes] : *nonces) {
    Reader r{bytes};
    const auto expires = static_cast<std::int64_t>(r.u64());
    if (!r.ok) return errors::invalid_argument(store_->path() + ": nonce " + nonce.substr(0, 16) + " does not decode");
    if (expires > now) trust_.replay().restore(nonce, expires);
  }
  if (auto pruned = store_->prune_nonces(now); !pruned) return pruned.error();
  // End reports this node still owes to agents' homes: sent again once it listens.
  auto ends = store_->load(NodeStore::Table::ends);
  if (!ends) return ends.error();
  for (auto& [id, bytes] : *ends) {
    Reader r{bytes};
    const bool known = !bytes.empty() && bytes[0] == kEndVersion;
    if (known) r.in = r.in.subspan(1);
    std::string home = r.text();
    auto report = decode_end(r.bytes());
    if (!known || !r.ok || !r.in.empty() || !report) {
      return errors::invalid_argument(store_->path() + ": the end report of agent " + id + " does not decode" +
                                      (report ? std::string() : ": " + report.error().message));
    }
    std::lock_guard lock(mutex_);
    to_report_.emplace_back(std::move(home), std::move(*report));
  }
  if (!ends->empty()) log_info("agents", options_.name + ": " + std::to_string(ends->size()) + " end reports owed to homes from " + store_->path());
  // Signed evaluations' nonces are kept one by one (a TRANSFER's with its COMMIT).
  trust_.replay().set_keeper([store = store_](std::string_view nonce, std::int64_t expires) -> Result<void> {
    const NodeStore::Write w = nonce_row(std::string(nonce), expires);
    return store->write(std::span(&w, 1));
  });
  if (commits->size() > expired.size()) {
    log_info("agents", options_.name + ": " + std::to_string(commits->size() - expired.size()) + " commits of hand-overs from " +
                           store_->path());
  }
  // Resident agents first: a row whose bundle or policy rule is gone is left in the store,
  // logged, for an operator to see (never dropped).
  auto residents = store_->load(NodeStore::Table::residents);
  if (!residents) return residents.error();
  for (auto& [id, bytes] : *residents) {
    auto bad = [&, id = id](const std::string& why) {
      return errors::invalid_argument(store_->path() + ": resident agent " + id + " does not decode: " + why);
    };
    if (bytes.empty() || (bytes[0] != kResidentVersion && bytes[0] != kResidentVersionWeakOnly)) return bad("unknown layout");
    const bool has_image_field = bytes[0] == kResidentVersion;
    Reader r{std::span<const std::uint8_t>(bytes).subspan(1)};
    auto value = decode_value(r.bytes());
    if (!r.ok || !value) return bad(value ? "truncated" : value.error().message);
    auto record = record_from_value(*value);
    if (!record) return bad(record.error().message);
    const auto status = static_cast<AgentState>(r.u64());
    std::string reason = r.text();
    const bool has_rule = r.u64() != 0;
    const std::string rule_name = r.text();
    Resumed resumed{id, r.text(), r.text()};
    std::span<const std::uint8_t> image;
    if (has_image_field) image = r.bytes();
    if (!r.ok || !r.in.empty()) return bad("truncated or trailing bytes");
    // A strong agent's heap image is raw guest memory: loaded only by a jail, and only once
    // its hash is the one its record names. A row that fails this is refused, logged and
    // left in the store (the node goes on serving everything else).
    if (auto checked = restore_image(*record, image); !checked) {
      log_error("agents", options_.name + ": resident agent " + id + " is kept in " + store_->path() +
                              " but refused: " + checked.error().message + ": not resumed");
      continue;
    }
    auto bundle = cache_.get(record->bundle_hash);
    if (!bundle) {
      log_error("agents", options_.name + ": resident agent " + id + " is kept in " + store_->path() + " but its bundle " +
                              record->bundle_hash + " is not in the code cache: not resumed");
      continue;
    }
    const PolicyRule* rule = nullptr;
    if (has_rule || options_.policy) {
      if (options_.policy) {
        for (const PolicyRule& candidate : options_.policy->rules()) {
          if (candidate.name == rule_name) rule = &candidate;
        }
        if (rule == nullptr && options_.policy->default_rule().name == rule_name) rule = &options_.policy->default_rule();
      }
      if (rule == nullptr) {
        log_error("agents", options_.name + ": resident agent " + id + " ran under policy rule '" + rule_name +
                                "', which this node's policy no longer has: not resumed (kept in " + store_->path() + ")");
        continue;
      }
    }
    std::lock_guard lock(mutex_);
    Resident& res = residents_[id];
    res.record = std::move(*record);
    res.bundle = std::move(bundle);
    res.rule = rule;
    res.rate = std::make_shared<RateLimiter>(rule != nullptr ? rule->quotas.messages_per_second : 0);
    res.status = status == AgentState::moving || status == AgentState::asleep || status == AgentState::stranded
                     ? status : AgentState::arriving;
    res.reason = std::move(reason);
    res.since_unix_ms = unix_ms_now();
    if (res.status != AgentState::moving) resumed.move_peer.clear();
    to_resume_.push_back(std::move(resumed));
  }
  if (!residents->empty()) {
    log_info("agents", options_.name + ": " + std::to_string(to_resume_.size()) + " resident agents from " + store_->path());
  }
  auto rows = store_->load(NodeStore::Table::tracked);
  if (!rows) return rows.error();
  std::vector<std::string> to_forward;
  std::size_t running = 0;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, bytes] : *rows) {
      auto t = decode_tracked(bytes);
      if (!t) return errors::invalid_argument(store_->path() + ": tracked agent " + id + " does not decode: " + t.error().message);
      if (!t->status.done() && t->status.status != AgentState::stranded) {
        ++running;
        if (!t->pending.empty()) to_forward.push_back(id);
      }
      Tracked& kept = tracked_[id] = std::move(*t);
      if (kept.ended_ms != 0) schedule_forget(id, kept);
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

void AgentRuntime::resume_durable() {
  std::vector<Resumed> resumed;
  std::vector<std::pair<std::string, EndReport>> owed;
  {
    std::lock_guard lock(mutex_);
    if (resumed_) return;
    resumed_ = true;
    resumed.swap(to_resume_);
    owed.swap(to_report_);
  }
  // A home that had the report already takes it as a repeated one.
  for (auto& [home, report] : owed) notify_home(home, report);
  for (Resumed& a : resumed) {
    AgentState status;
    bool mail = false;
    std::string home;
    ArrivalReport report;
    {
      std::lock_guard lock(mutex_);
      auto it = residents_.find(a.id);
      if (it == residents_.end()) continue;
      status = it->second.status;
      mail = !it->second.record.mailbox.empty();
      home = it->second.record.home;
      if (status == AgentState::asleep) report = arrival_report(it->second.record);
    }
    if (status == AgentState::moving) {
      // The hand-over it was in: offered again; a destination that committed it answers
      // with its COMMIT (its dedup), one that did not takes it now.
      spawn(migrate(a.id, a.move_peer, a.move_entry, true), "agent migration after a restart");
    } else if (status == AgentState::asleep) {
      // Its arrival's report may have been lost with the node (it leaves as the first step
      // starts, and that step may have ended before it got through): the home hears again.
      spawn(report_arrival(home, std::move(report)), "report of an arrival after a restart");
      if (mail) wake_if_asleep(a.id);
    } else if (status == AgentState::arriving) {
      // Its step runs again, and its home hears where it is as that step starts.
      {
        std::lock_guard lock(mutex_);
        auto it = residents_.find(a.id);
        if (it != residents_.end()) it->second.report_owed = true;
      }
      schedule_run(a.id);
    }
  }
}

}  // namespace sojourn
