// The exactly-once hand-over of an agent (docs/migration.md): OFFER -> (bundle if missing)
// -> TRANSFER -> COMMIT. The source keeps the agent until a COMMIT arrives; the destination
// deduplicates by (id, epoch) and answers a repeated TRANSFER with its earlier COMMIT. A
// TRANSFER names its destination and carries a nonce and an expiry time: captured and
// replayed elsewhere or later, it is refused.
#include "agents/agent_runtime.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "agents/destinations.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {

// Failures after which the outcome is unknown (the request may have been done): retried.
// Anything else is the destination's definite refusal.
bool outcome_unknown(Errc code) {
  return code == Errc::connect_failed || code == Errc::connection_closed || code == Errc::timeout ||
         code == Errc::remote_protocol_error || code == Errc::shutting_down;
}

std::string_view as_text(std::span<const std::uint8_t> bytes) {
  // SAFETY: the bytes are viewed as chars of the same size, for as long as `bytes` lives.
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace

Result<Value> AgentRuntime::on_offer(const Value& request) {
  if (impl_.shutting_down) return errors::shutting_down();
  const std::string id = field_string(request, "id");
  const std::uint64_t epoch = field_u64(request, "epoch");
  const std::string hash = field_string(request, "bundle");
  if (!is_agent_id(id) || !is_bundle_hash(hash)) return errors::invalid_argument("bad agent offer");
  Value reply = Value::table();
  {
    std::lock_guard lock(mutex_);
    if (commits_.count({id, epoch}) != 0) {
      reply.set("duplicate", true);
      return reply;
    }
    auto seen = highest_epoch_.find(id);
    if (seen != highest_epoch_.end() && epoch <= seen->second.epoch) {
      return make_error(Errc::stale_epoch, "agent " + id + " epoch " + std::to_string(epoch) +
                                               " is stale (this node has seen epoch " + std::to_string(seen->second.epoch) + ")");
    }
  }
  reply.set("duplicate", false);
  reply.set("need_bundle", !cache_.contains(hash));
  return reply;
}

Result<Value> AgentRuntime::on_transfer(const Value& request, const PeerIdentity& caller) {
  if (impl_.shutting_down) return errors::shutting_down();
  auto record = record_from_value(request.get("record"));
  if (!record) return record.error();
  const std::string what = "the TRANSFER of agent " + record->id + " (epoch " + std::to_string(record->epoch) + ")";
  if (auto fresh = impl_.replay.check_expiry(static_cast<std::int64_t>(field_u64(request, "expires")), what); !fresh) {
    return fresh.error();
  }
  if (auto addressed = check_addressed_to(field_string(request, "to"), self(), what); !addressed) return addressed.error();
  {
    std::lock_guard lock(mutex_);
    // Checked after the expiry above: a COMMIT is remembered for as long as any copy of its
    // TRANSFER can be unexpired (remember_commit says why), so forgetting it loses no dedup.
    auto done = commits_.find({record->id, record->epoch});
    if (done != commits_.end()) return done->second.reply;  // a retried TRANSFER: the same COMMIT again
    auto seen = highest_epoch_.find(record->id);
    if (seen != highest_epoch_.end() && record->epoch <= seen->second.epoch) {
      return make_error(Errc::stale_epoch, "agent " + record->id + " epoch " + std::to_string(record->epoch) +
                                               " is stale (this node has seen epoch " + std::to_string(seen->second.epoch) + ")");
    }
  }
  if (auto fresh = impl_.replay.admit(field_string(request, "nonce"), static_cast<std::int64_t>(field_u64(request, "expires")), what);
      !fresh) {
    return fresh.error();
  }
  std::shared_ptr<const CachedBundle> bundle;
  Value bytes = request.get("bundle_bytes");
  if (bytes.is_string()) {
    const std::string& text = bytes.as_string();
    // SAFETY: the string's bytes are read as unsigned bytes of the same size.
    // Checked (signature, policy) below, before it is stored: refused code takes no room here.
    auto put = cache_.check(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()),
                            record->bundle_hash);
    if (!put) return put.error();
    bundle = *put;
  } else {
    bundle = cache_.get(record->bundle_hash);
    if (!bundle) return make_error(Errc::bad_bundle, "bad bundle: " + record->bundle_hash + " is not cached here; send it");
  }
  // Its signature, its budget against the manifest's, the policy.
  auto rule = admit_code(*record, *bundle, caller);
  if (!rule) return rule.error();
  // An arriving agent runs here at this node's peer level (or the policy's), or the stronger
  // one it carries: a node may strengthen an agent's jail, never weaken it.
  auto level = impl_.level_for(record->isolation, *rule);
  if (!level) return level.error();
  record->isolation = *level;
  bundle = cache_.store(std::move(bundle));
  const std::string id = record->id;
  const std::uint64_t epoch = record->epoch;
  const std::string home = record->home;
  record->hops.push_back(AgentHop{self(), epoch, unix_ms_now(), 0, encode_value(record->state).size(),
                                  std::string(isolation_name(record->isolation))});
  Value commit = Value::table();
  commit.set("committed", true);
  commit.set("id", id);
  commit.set("epoch", static_cast<std::int64_t>(epoch));
  commit.set("node", self());
  {
    std::lock_guard lock(mutex_);
    // Checked again under the lock: two copies of one TRANSFER may race here.
    auto done = commits_.find({id, epoch});
    if (done != commits_.end()) return done->second.reply;
    remember_commit(id, epoch, commit);
  }
  log_info("agents", impl_.options.name + ": agent " + id + " arrived (epoch " + std::to_string(epoch) + ")");
  // Resident now (this COMMIT is the source's cue to drop its copy), but it runs only once
  // its home knows where it is and has handed over the messages waiting for it.
  {
    std::lock_guard lock(mutex_);
    Resident& res = residents_[id];
    res.record = std::move(*record);
    res.bundle = std::move(bundle);
    res.rule = *rule;
    res.hop_cpu_spent = 0;
    res.rate = std::make_shared<RateLimiter>(*rule != nullptr ? (*rule)->quotas.messages_per_second : 0);
    res.status = "arriving";
    res.since_unix_ms = unix_ms_now();
  }
  spawn(arrive(id), "agent arrival");
  return commit;
}

asio::awaitable<Result<Value>> AgentRuntime::hand_over(AgentRecord record, std::shared_ptr<const CachedBundle> bundle,
                                                       std::string peer) {
  Value offer = Value::table();
  offer.set("id", record.id);
  offer.set("epoch", static_cast<std::int64_t>(record.epoch));
  offer.set("bundle", record.bundle_hash);
  offer.set("state_bytes", static_cast<std::int64_t>(encode_value(record.state).size()));
  Value offer_args = Value::array({offer});
  Result<Value> answer = co_await impl_.call_peer(peer, "agent.offer", offer_args);
  if (!answer) co_return answer.error();
  if (answer->get("duplicate").truthy()) {
    // An earlier TRANSFER of this epoch was committed but its COMMIT was lost.
    Value commit = Value::table();
    commit.set("committed", true);
    commit.set("node", peer);
    co_return commit;
  }
  Value transfer = Value::table();
  transfer.set("record", record_to_value(record));
  // Bound to this destination and this moment: a captured copy is refused elsewhere or later.
  transfer.set("to", destination_for(peer));
  transfer.set("nonce", random_nonce());
  transfer.set("expires", unix_ms_now() + static_cast<std::int64_t>(impl_.options.transfer_lifetime.count()));
  if (answer->get("need_bundle").truthy()) {
    transfer.set("bundle_bytes", std::string(as_text(bundle->bytes)));
    ++bundles_sent_;
  }
  Value transfer_args = Value::array({transfer});
  Result<Value> commit = co_await impl_.call_peer(peer, "agent.transfer", transfer_args);
  co_return commit;
}

asio::awaitable<void> AgentRuntime::migrate(std::string id, std::string peer, std::string entry) {
  AgentRecord next;
  std::shared_ptr<const CachedBundle> bundle;
  DestinationScope scope;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end()) co_return;
    next = it->second.record;
    bundle = it->second.bundle;
    scope.rule = it->second.rule;
  }
  if (next.epoch + 1 > next.max_hops) {
    finish(id, "failed", "agent " + id + " ran out of its hop budget of " + std::to_string(next.max_hops) + " hops (at " +
                             self() + ")", Value{});
    co_return;
  }
  // Where it may go is decided on the record as it was here: its home, stops and visits.
  const AgentRecord here = next;
  scope.tls = impl_.tls != nullptr;
  scope.peers = &impl_.options.tls.peers;
  scope.record = &here;
  if (auto allowed = check_destination(scope, peer); !allowed) {
    // The code asked for this destination itself: it stays here, told no more than that.
    log_warn("agents", impl_.options.name + ": " + allowed.error().message);
    strand(id, next.epoch, "cannot move agent " + id + " to " + peer + ": " + kDestinationRefused);
    co_return;
  }
  next.epoch += 1;
  next.entry = entry;
  if (!next.itinerary.empty() && next.itinerary.front() == peer) next.itinerary.erase(next.itinerary.begin());
  next.updated_unix_ms = unix_ms_now();

  // Where to try, in order: the asked destination, then the next itinerary stop, then home.
  std::vector<std::string> targets{peer};
  if (!next.itinerary.empty() && next.itinerary.front() != peer) targets.push_back(next.itinerary.front());
  if (next.home != self() && next.home != peer) targets.push_back(next.home);

  std::string last_error, last_error_for_code;
  for (const std::string& target : targets) {
    if (target != peer) {
      if (auto allowed = check_destination(scope, target); !allowed) {
        log_warn("agents", impl_.options.name + ": not falling back: " + allowed.error().message);
        continue;
      }
    }
    AgentRecord attempt = next;
    if (target != peer) {
      // A fallback stop: skip the unreachable one in the itinerary.
      auto& it = attempt.itinerary;
      if (!it.empty() && it.front() == target) it.erase(it.begin());
    }
    auto backoff = impl_.options.retry_backoff;
    // Retries end within transfer_lifetime of the first try: the destination remembers a
    // COMMIT at least that long (docs/migration.md, "What a node remembers"), so a retry
    // after a lost COMMIT always hears `duplicate`, never a second commit.
    const auto first_try = std::chrono::steady_clock::now();
    for (std::uint32_t tries = 0; tries <= impl_.options.migration_retries; ++tries) {
      if (impl_.shutting_down) co_return;
      if (tries > 0 && std::chrono::steady_clock::now() - first_try >= impl_.options.transfer_lifetime) break;
      Result<Value> commit = co_await hand_over(attempt, bundle, target);
      if (commit && commit->get("committed").truthy()) {
        {
          std::lock_guard lock(mutex_);
          // The destination holds it now: exactly one live copy. Only this copy goes: the
          // agent may already have come back (a newer epoch) before this COMMIT arrived.
          auto it = residents_.find(id);
          if (it != residents_.end() && it->second.record.epoch + 1 == attempt.epoch) residents_.erase(it);
        }
        log_info("agents", impl_.options.name + ": agent " + id + " moved to " + target + " (epoch " +
                               std::to_string(attempt.epoch) + ")");
        co_return;
      }
      if (commit) {
        last_error = last_error_for_code = "no commit in the answer";
        break;
      }
      last_error = commit.error().message;
      last_error_for_code = hand_over_failure_for_code(commit.error());
      if (!outcome_unknown(commit.error().code)) break;
      log_warn("agents", impl_.options.name + ": moving agent " + id + " to " + target + ": " + last_error + "; retrying");
      asio::steady_timer timer(impl_.io, backoff);
      co_await timer.async_wait(asio::use_awaitable);
      backoff *= 2;
    }
  }
  // Nowhere to go: the agent stays here, stopped. The log has the whole story; the status,
  // which code can read, only what does not make this node a probe of its network.
  log_warn("agents", impl_.options.name + ": cannot move agent " + id + " to " + peer + ": " + last_error);
  strand(id, next.epoch - 1, "cannot move agent " + id + " to " + peer + ": " + last_error_for_code);
}

void AgentRuntime::strand(const std::string& id, std::uint64_t epoch, const std::string& reason) {
  std::string home, token;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end() || it->second.record.epoch != epoch) return;
    it->second.status = "stranded";
    it->second.reason = reason;
    home = it->second.record.home;
    token = it->second.record.report_token;
  }
  Value report = Value::table();
  report.set("id", id);
  report.set("epoch", static_cast<std::int64_t>(epoch));
  report.set("node", self());
  report.set("status", "stranded");
  report.set("reason", reason);
  report.set("token", token);  // the home takes reports only from the agent's holder
  notify_home(home, "agent.arrived", report);
}

}  // namespace sojourn
