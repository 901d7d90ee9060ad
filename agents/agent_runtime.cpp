// Resident agents: making one resident, running its steps on the worker pool, the host
// calls its code makes, and how a step ends (it moved, finished or failed).
#include "agents/agent_runtime.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

#include "agents/inline_step.hpp"
#include "agents/record_step.hpp"
#include "agents/store/kv_store.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/image/scratch.hpp"
#include "sojourn/core/bundle.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/core/signature.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn {

namespace {

// An agent step's host calls, answered by AgentRuntime::agent_host_call for that agent.
class AgentHostCalls final : public sandbox::HostCalls {
 public:
  explicit AgentHostCalls(std::function<Result<Value>(std::string_view, const Value&)> fn) : fn_(std::move(fn)) {}
  Result<Value> call(std::string_view service, const Value& args) override { return fn_(service, args); }

 private:
  std::function<Result<Value>(std::string_view, const Value&)> fn_;
};

constexpr std::size_t kMaxLogLines = 64;

// An inline attempt's host calls: none is made. The first one ends the attempt (recorded, so
// that a step catching the error with pcall is still run again) before it has any effect.
class RefusedHostCalls final : public sandbox::HostCalls {
 public:
  Result<Value> call(std::string_view /*service*/, const Value& /*args*/) override {
    gave_way_ = true;
    return make_error(Errc::internal, "not on the network thread");
  }
  bool gave_way() const { return gave_way_; }

 private:
  bool gave_way_ = false;
};

}  // namespace

AgentRuntime::AgentRuntime(const AgentRuntimeRoles& roles)
    : options_(roles.options), runtime_(roles.runtime), services_(roles.services), links_(roles.links),
      trust_(roles.trust), jails_(roles.jails), server_(roles.server), store_(roles.store), kv_(roles.kv),
      // With a data dir and no code cache dir of its own, bundles are kept in DIR/code-cache:
      // a resident agent taken back after a restart needs its code.
      cache_(options_.code_cache_dir.empty() && !options_.data_dir.empty() ? options_.data_dir + "/code-cache"
                                                                           : options_.code_cache_dir,
             options_.code_cache_max_bytes, options_.code_cache_max_entries),
      // Images in transit: each bounded by the largest memory limit a run here gets, all of
      // them together by the same figure, each kept at most as long as its TRANSFER lives.
      staged_images_({options_.max_limits.memory_bytes, options_.max_limits.memory_bytes, options_.transfer_lifetime}) {}

std::string AgentRuntime::self() const {
  return server_.advertised();
}

void AgentRuntime::spawn(asio::awaitable<void> task, const char* what) {
  asio::co_spawn(runtime_.io(), std::move(task), [what](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log_error("agents", std::string(what) + " failed: " + ex.what());
    }
  });
}

Result<AgentLaunchAnswer> AgentRuntime::launch_here(const AgentLaunchRequest& request, const PeerIdentity& caller) {
  if (runtime_.shutting_down()) return errors::shutting_down();
  if (request.bundle_bytes.empty()) return errors::invalid_argument("agent.launch needs a bundle");
  const std::string& text = request.bundle_bytes;
  // SAFETY: the string's bytes are read as unsigned bytes of the same size.
  // Checked (signature, policy) before it is stored: refused code takes no room here.
  auto bundle = cache_.check(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  if (!bundle) return bundle.error();
  AgentRecord r;
  r.id = new_agent_id();
  r.home = self();
  if (r.home.empty()) return errors::invalid_argument("this node has no address to be an agent's home (listen first)");
  r.owner = request.owner.empty() ? "anonymous" : request.owner;
  r.bundle_hash = (*bundle)->hash;
  r.entry = request.entry.empty() ? "start" : request.entry;
  r.state = request.state.is_table() ? request.state : Value::table();
  r.itinerary = request.itinerary;
  const BundleManifest& m = (*bundle)->bundle.manifest;
  r.max_hops = request.max_hops;
  if (r.max_hops == 0) r.max_hops = m.max_hops != 0 ? m.max_hops : options_.default_max_hops;
  if (m.max_hops != 0) r.max_hops = std::min(r.max_hops, m.max_hops);  // the launcher may only lower it
  r.quotas = m.quotas;
  if (m.cpu_budget != 0) r.cpu_left = m.cpu_budget;
  r.signer = request.signer;
  r.signature = request.signature;
  r.launcher = viewer_of(caller);
  // Before the policy, which may refuse strong agents. A strong manifest makes a strong agent
  // whatever the launch asked; a launch may ask for strong where the manifest is silent (weak)
  // and unsigned (admit_code refuses it where the owner signed weak).
  r.mobility = m.mobility == "strong" ? Mobility::strong : request.mobility;
  auto rule = admit_code(r, **bundle, caller);
  if (!rule) return rule.error();
  // The code came from a peer (the launcher): the node's peer level at least, or the policy's.
  auto level = trust_.level_for(Isolation::trusted, *rule);
  if (!level) return level.error();
  r.isolation = *level;
  if (r.mobility == Mobility::strong && r.isolation == Isolation::trusted) {
    return sandbox::strong_refused(r.isolation, "its Lua heap is not an arena at a fixed address, and this node "
                                                "runs this agent's code there");
  }
  // The cache may keep another copy of the same bundle (a launch beside this one stored it
  // first) and drop this one: `m` is not used past this line.
  *bundle = cache_.store(std::move(*bundle));
  r.created_unix_ms = r.updated_unix_ms = unix_ms_now();
  AgentHop first{r.home, 0, r.created_unix_ms, 0, encode_value(r.state).size(), std::string(isolation_name(r.isolation))};
  first.mobility = mobility_name(r.mobility);
  r.hops.push_back(std::move(first));
  if (auto tracked = track_launch(r); !tracked) return tracked.error();
  AgentLaunchAnswer answer{r.id, r.home};
  log_info("agents", options_.name + ": launched agent " + r.id + " (" + (*bundle)->bundle.manifest.name + ")");
  make_resident(std::move(r), std::move(*bundle), *rule);
  return answer;
}

void AgentRuntime::make_resident(AgentRecord record, std::shared_ptr<const CachedBundle> bundle, const PolicyRule* rule) {
  const std::string id = record.id;
  {
    std::lock_guard lock(mutex_);
    Resident& res = residents_[id];
    res.record = std::move(record);
    res.bundle = std::move(bundle);
    res.rule = rule;
    res.hop_cpu_spent = 0;
    res.rate = std::make_shared<RateLimiter>(rule != nullptr ? rule->quotas.messages_per_second : 0);
    res.status = AgentState::queued;
    res.reason.clear();
    res.since_unix_ms = unix_ms_now();
    persist_resident(id, res);
  }
  schedule_run(id);
}

void AgentRuntime::schedule_run(const std::string& id) {
  bool here = false;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    here = it != residents_.end() && step_may_run_inline(it->second);
  }
  if (!here) {
    schedule_worker_run(id);
    return;
  }
  // Posted, not run, and posted once more from the queue: the TRANSFER's request runs in a
  // coroutine whose reply (the COMMIT) is written a queue turn after its handler returns, and
  // it leaves first.
  auto self = shared_from_this();
  asio::post(runtime_.io(), [self, id] {
    asio::post(self->runtime_.io(), [self, id] {
      try {
        self->run_step(id, /*inline_attempt=*/true);
      } catch (const std::exception& e) {
        log_error("agents", "agent " + id + ": " + e.what());
      }
    });
  });
}

bool AgentRuntime::step_may_run_inline(const Resident& res) {
  if (options_.inline_eval_instructions == 0 || options_.inline_eval_wall_ms == 0) return false;
  // With a store, a step's outcome is a disk write: not on the network thread.
  if (store_ || runtime_.shutting_down()) return false;
  const AgentRecord& r = res.record;
  if (r.isolation != Isolation::trusted || r.mobility != Mobility::weak || r.image || !res.bundle) return false;
  if (r.hops.empty() || r.hops.back().state_bytes > kInlineStepStateBytes) return false;
  auto known = inline_verdicts_.find(res.bundle->hash);
  if (known != inline_verdicts_.end()) return known->second;
  if (inline_verdicts_.size() >= kInlineVerdicts) inline_verdicts_.clear();
  const bool ok = inline_step_text(res.bundle->bundle.main_source());
  inline_verdicts_.emplace(res.bundle->hash, ok);
  return ok;
}

void AgentRuntime::schedule_worker_run(const std::string& id) {
  auto self = shared_from_this();
  asio::post(runtime_.workers(), [self, id] {
    try {
      self->run_step(id);
    } catch (const std::exception& e) {
      log_error("agents", "agent " + id + ": " + e.what());
    }
  });
}

std::atomic<std::uint64_t>& AgentRuntime::hops_counter(bool in) {
  std::atomic<std::atomic<std::uint64_t>*>& cached = in ? hops_in_ : hops_out_;
  std::atomic<std::uint64_t>* series = cached.load(std::memory_order_acquire);
  if (series == nullptr) {
    series = &counters_->metrics.hops.at({in ? "in" : "out"});  // the family's lock; a stable address
    cached.store(series, std::memory_order_release);
  }
  return *series;
}

metrics::HistogramFamily::Series& AgentRuntime::step_series(Isolation level) {
  std::atomic<metrics::HistogramFamily::Series*>& cached = step_series_.at(static_cast<std::size_t>(level));
  metrics::HistogramFamily::Series* series = cached.load(std::memory_order_acquire);
  if (series == nullptr) {
    series = &counters_->metrics.step_seconds.at({std::string(isolation_name(level))});
    cached.store(series, std::memory_order_release);
  }
  return *series;
}

void AgentRuntime::trace_step(const char* kind, const std::string& agent, const std::string& peer, std::string detail) {
  if (counters_ != nullptr && counters_->trace.has_file()) counters_->trace.add(kind, agent, peer, std::move(detail));
}

// The first step of a visit: a hop in (or the launch) for the metrics and the trace.
void AgentRuntime::note_visit(const AgentRecord& record) {
  if (counters_ == nullptr) return;
  const bool hopped = record.epoch > 0;
  if (hopped) hops_counter(true).fetch_add(1, std::memory_order_relaxed);
  const auto& hops = record.hops;
  counters_->trace.add(hopped ? "arrival" : "launch", record.id, hopped && hops.size() >= 2 ? hops[hops.size() - 2].node : "",
                       "epoch " + std::to_string(record.epoch));
}

void AgentRuntime::run_step(const std::string& id, bool inline_attempt) {
  AgentRecord record;
  std::shared_ptr<const CachedBundle> bundle;
  const PolicyRule* rule = nullptr;
  std::uint64_t hop_spent = 0;
  bool first_step = false;
  bool report_owed = false;
  bool image_hashed = false;  // record.image is the Resident's hashed_image
  std::optional<ArrivalReport> report;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end()) return;
    it->second.status = AgentState::running;
    first_step = !it->second.visit_counted;
    it->second.visit_counted = true;
    // A held report leaves when its hold ends (tracking.cpp), not here.
    report_owed = it->second.report_owed && !it->second.report_hold;
    if (report_owed) {
      it->second.report_owed = false;
      it->second.arrival_in_flight = true;
    }
    AgentRecord& held = it->second.record;
    // What reads the hop trail and the delivered ids reads them here; the step's copy goes
    // without them, its mailbox and its log (copy_for_step).
    if (report_owed) report = arrival_report(held);
    if (first_step) note_visit(held);  // (the metrics and the trace have locks of their own)
    record = copy_for_step(held);
    image_hashed = record.image != nullptr && it->second.hashed_image.lock() == record.image;
    bundle = it->second.bundle;
    rule = it->second.rule;
    hop_spent = it->second.hop_cpu_spent;
  }
  // The arrival's report leaves beside this step, which does not wait for the home: the
  // messages its answer hands over reach the mailbox (and wake the agent) when it comes.
  if (report) spawn(report_arrival(record.home, std::move(*report)), "report of an arrival to its home");
  const StepBudget budget = step_budget(record, *bundle, rule, hop_spent);
  if (!budget.exhausted.empty()) {
    finish(id, AgentState::failed, budget.exhausted, Value{});
    return;
  }
  sandbox::RunInput input;
  const std::string chunk_name = bundle->bundle.main_file();  // RunInput holds views
  input.source = bundle->bundle.main_source();
  input.chunk_name = chunk_name;
  input.args = Value::table();
  input.limits = budget.limits;
  if (inline_attempt) {
    input.limits.cpu_instructions = std::min(input.limits.cpu_instructions, options_.inline_eval_instructions);
    input.limits.wall_ms = std::min<std::uint64_t>(input.limits.wall_ms, options_.inline_eval_wall_ms);
  }
  input.allow_jit = false;
  input.abort = runtime_.abort_flag();
  // Warm guests serve one principal (docs/jails.md): the bundle's verified signer, or anonymous.
  const std::string principal = record.signer.empty() ? std::string("anonymous") : "signer " + key_fingerprint(record.signer);
  input.principal = principal;
  input.image_codec = options_.image_codec;  // how a stop here seals the heap (--image-codec)
  Value info = Value::table();
  info.set("id", record.id);
  info.set("home", record.home);
  info.set("here", self());
  info.set("owner", record.owner);
  info.set("epoch", static_cast<std::int64_t>(record.epoch));
  info.set("itinerary", strings_to_value(record.itinerary));
  info.set("isolation", std::string(isolation_name(record.isolation)));
  sandbox::AgentInput agent{record.entry, record.state, info};
  // The step's kv writes: seen by the step, by nobody else until its outcome commits them.
  KvStep writes(kv_);
  AgentHostCalls worker_host([this, id, &writes](std::string_view service, const Value& args) {
    return agent_host_call(id, service, args, writes);
  });
  RefusedHostCalls refused;
  sandbox::HostCalls& host = inline_attempt ? static_cast<sandbox::HostCalls&>(refused) : worker_host;
  const bool strong = record.mobility == Mobility::strong;
  // A heap image fixes its arena, so a strong agent keeps the memory limit of its first step.
  if (strong && record.strong_memory != 0) input.limits.memory_bytes = record.strong_memory;
  sandbox::StrongOutcome taken;  // a strong step's image and figures (its `step` moves out)
  if (strong && record.image) trace_step("resume_step", id, "", "");  // on a worker (docs/bench.md)
  const auto started = std::chrono::steady_clock::now();
  Result<sandbox::AgentOutcome> outcome = [&]() -> Result<sandbox::AgentOutcome> {
    if (!strong) return jails_.run_agent_step(record.isolation, input, agent, &host);
    // The digest this node found the image's bytes to hash to, when it did (hashed_image).
    const std::optional<std::array<std::uint8_t, 32>> hashed =
        image_hashed ? sandbox::image::digest_bytes(record.image_sha256) : std::nullopt;
    Result<sandbox::StrongOutcome> s =
        record.image ? jails_.resume_strong_step(record.isolation, *record.image, input, info, &host, hashed ? &*hashed : nullptr)
                     : jails_.run_strong_step(record.isolation, input, agent, &host);
    if (!s) return s.error();
    taken = std::move(*s);
    return std::move(taken.step);
  }();
  if (inline_attempt) {
    // Dropped: past an inline budget (not the step's own), or at a host call, which was not
    // made. Nothing of it is kept (its state, its go, its kv writes, its CPU); the same record
    // runs again on a worker.
    const bool past_budget =
        !outcome && ((outcome.error().code == Errc::cpu_limit && input.limits.cpu_instructions < budget.limits.cpu_instructions) ||
                     (outcome.error().code == Errc::deadline && input.limits.wall_ms < budget.limits.wall_ms));
    if (refused.gave_way() || past_budget) {
      if (tracing()) trace_step("step_gave_way", id, "", refused.gave_way() ? "host call" : "inline budget");
      schedule_worker_run(id);
      return;
    }
    if (tracing()) trace_step("step_inline", id, "", "");
  }
  if (counters_ != nullptr) {
    metrics::HistogramFamily::observe(step_series(record.isolation), std::chrono::steady_clock::now() - started);
    if (record.isolation != Isolation::trusted) counters_->metrics.jail_starts.inc({std::string(isolation_name(record.isolation))});
  }
  const auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  // Stopped by the node's shutdown: not an outcome. With a store the agent stays as its row
  // has it and the step runs again after a restart, its kv writes dropped with it.
  if (!outcome && outcome.error().code == Errc::shutting_down && runtime_.shutting_down() && store_) return;

  // A step that hit its CPU limit spent all of it; a budget (not the per-run quota) that
  // bound it ends the agent with the budget's reason.
  const bool cpu_killed = !outcome && outcome.error().code == Errc::cpu_limit;
  const std::uint64_t spent_cpu = outcome ? charged_instructions(*outcome) : cpu_killed ? budget.limits.cpu_instructions : 0;
  std::string go_peer, go_entry, failure = outcome ? std::string() : outcome.error().message;
  if (cpu_killed && budget.bound != StepBudget::Bound::run) failure = out_of_budget(record, *bundle, budget.bound, rule);
  // The state's size is checked before the lock every resident shares: encoding it is the
  // step's own work.
  if (outcome && failure.empty() && rule != nullptr && rule->quotas.max_state_bytes != 0 &&
      (outcome->went || outcome->waits) && !outcome->strong_stop) {
    const std::size_t state_bytes = encode_value(outcome->state).size();
    if (state_bytes > rule->quotas.max_state_bytes) {
      failure = "agent " + id + "'s state of " + std::to_string(state_bytes) + " bytes is over the " +
                std::to_string(rule->quotas.max_state_bytes) + " bytes policy rule " + rule->name + " allows at " + self();
    }
  }
  const bool strong_stop = outcome && failure.empty() && strong && outcome->strong_stop;
  const bool checkpoint = strong_stop && outcome->checkpoint;
  // What the TRANSFER names and the destination checks first: the digest the sealing computed
  // over the image as it compressed it (read from its header, no second pass over the bytes).
  const std::string image_sha256 = strong_stop ? sandbox::image::digest_hex(taken.image) : std::string();
  // A strong step's heap restored (resumed from an image) and sealed (at a go): the trace's
  // figures of what happened inside the step, before the departure and after the arrival.
  if (strong && counters_ != nullptr && counters_->trace.has_file() && !taken.marks.empty()) {
    // The step's inner moments, on the trace's clocks (the wall one derived from now's).
    const auto wall = std::chrono::system_clock::now();
    const auto mono = std::chrono::steady_clock::now();
    for (const auto& [kind, at] : taken.marks) {
      counters_->trace.add_at(wall - std::chrono::duration_cast<std::chrono::system_clock::duration>(mono - at), at, kind, id, "", "");
    }
  }
  if (strong && outcome && taken.restore_us != 0) {
    trace_step("image_restored", id, "", "restore_us=" + std::to_string(taken.restore_us));
  }
  if (strong_stop) {
    trace_step("image_sealed", id, "", "image_us=" + std::to_string(taken.image_us) + " raw_bytes=" +
                                           std::to_string(taken.raw_bytes) + " image_bytes=" + std::to_string(taken.image.size()) +
                                           " codec=" + std::string(image_codec_name(input.image_codec)));
  }
  bool wake = false;
  std::optional<ArrivalReport> held_report;  // a sleeping agent's held report: sent now
  std::vector<NodeStore::Write> outcome_rows;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end()) return;
    charge(it->second, spent_cpu);
    AgentRecord& r = it->second.record;
    if (!r.hops.empty()) {
      AgentHop& hop = r.hops.back();
      hop.spent_ms += spent.count();
      hop.restore_us += taken.restore_us;
      if (strong_stop) {
        hop.image_raw_bytes = taken.raw_bytes;
        hop.image_bytes = taken.image.size();
        hop.image_us += taken.image_us;
      }
    }
    r.updated_unix_ms = unix_ms_now();
    if (strong_stop) {
      // The heap is the agent now: the next step (here after a checkpoint, or at go_peer)
      // resumes it. The old image is dropped only here, once the new one exists.
      // Its buffer is kept for the next large image sealed or staged here when it is let go.
      r.image = sandbox::image::shared_image(std::move(taken.image));
      r.image_sha256 = image_sha256;
      // Hashed by the sealing as it was made, here, and immutable from now on.
      it->second.hashed_image = r.image;
      r.strong_memory = input.limits.memory_bytes;
      if (checkpoint) {
        it->second.status = AgentState::queued;
        outcome_rows = resident_row(id, it->second);  // after a restart: resumed from this image
      } else {
        go_peer = outcome->go_peer;
        it->second.status = AgentState::moving;
        outcome_rows = resident_row(id, it->second, go_peer);  // after a restart: offered again, with this image
      }
    } else if (outcome && failure.empty()) {
      if (strong) {
        // A weak go, a wait or the end: the heap is not carried on; a next step starts the
        // entry it names afresh (the state table is the one it had: a strong step keeps its
        // state in the heap).
        r.image.reset();
        r.image_sha256.clear();
        r.strong_memory = 0;
        if (outcome->state.is_table()) r.state = outcome->state;
      } else {
        r.state = outcome->state;
      }
      if (outcome->went) {
        go_peer = outcome->go_peer;
        go_entry = outcome->go_entry;
        it->second.status = AgentState::moving;
        outcome_rows = resident_row(id, it->second, go_peer, go_entry);  // after a restart: the hand-over again
      } else if (outcome->waits) {
        r.entry = outcome->go_entry;
        it->second.status = AgentState::asleep;
        held_report = release_report_hold(it->second);
        outcome_rows = resident_row(id, it->second);
        // A message that came during the step wakes it at once.
        if (!r.mailbox.empty()) wake = true;
      }
    }
    // Exactly-once steps: the step's kv writes and its outcome (the agent's row: moving,
    // asleep, or after a checkpoint queued with its new image) in one transaction. An
    // end (finished, failed) commits them in finish(), with the row's removal.
    const bool ends = !failure.empty() || !outcome || (!strong_stop && !outcome->went && !outcome->waits);
    if (!ends) {
      if (auto stored = kv_->commit(writes, std::move(outcome_rows)); !stored) {
        log_error("agents", options_.name + ": agent " + id + ": " + stored.error().message);
        failure = "agent " + id + "'s step could not be stored at " + self() + ": " + stored.error().message;
      }
    }
  }
  if (held_report) spawn(report_arrival(record.home, std::move(*held_report)), "report of an arrival to its home");
  if (!failure.empty()) {
    finish(id, AgentState::failed, failure, Value{}, &writes);
  } else if (checkpoint) {
    schedule_run(id);
  } else if (outcome->went) {
    if (counters_ != nullptr) {
      hops_counter(false).fetch_add(1, std::memory_order_relaxed);
      counters_->trace.add("departure", id, go_peer, strong_stop ? "strong" : "entry " + go_entry);
    }
    spawn(migrate(id, go_peer, go_entry), "agent migration");
  } else if (outcome->waits) {
    if (wake) wake_if_asleep(id);
  } else {
    finish(id, AgentState::finished, "", outcome->results, &writes);
  }
}

Result<Value> AgentRuntime::agent_host_call(const std::string& id, std::string_view service, const Value& args,
                                            KvStep& step) {
  if (service == "agent.receive") {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end() || it->second.record.mailbox.empty()) return Value{};
    Value message = it->second.record.mailbox.front();
    it->second.record.mailbox.erase(it->second.record.mailbox.begin());
    return message;
  }
  if (service == "agent.log") {
    Value line = args.get(1);
    std::string text = line.is_string() ? line.as_string() : std::string();
    log_info("agents", options_.name + ": agent " + id.substr(0, 8) + ": " + text);
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it != residents_.end()) {
      auto& log = it->second.record.log;
      log.push_back(self() + ": " + text);
      if (log.size() > kMaxLogLines) log.erase(log.begin());
    }
    return Value{};
  }
  // Every service from here on, code.require included, is the policy's to grant.
  const PolicyRule* rule = nullptr;
  std::shared_ptr<RateLimiter> rate;
  std::shared_ptr<const CachedBundle> bundle;
  std::string home;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it != residents_.end()) {
      rule = it->second.rule;
      rate = it->second.rate;
      bundle = it->second.bundle;
      home = it->second.record.home;
    }
  }
  if (rule != nullptr && rate) {
    if (auto granted = check_grant(rule, *rate, service); !granted) return granted.error();
  }
  if (service == "code.require") {
    Value name = args.get(1);
    return require_module(name.is_string() ? name.as_string() : std::string(), bundle.get(), home);
  }
  // This node's kv store, through the step's writes (other services: at least once).
  if (KvStore::is_kv_service(service)) return step.call(service, args);
  return services_.call_from_lua(service, args);
}

void AgentRuntime::finish(const std::string& id, AgentState how, const std::string& reason, Value result, KvStep* step) {
  EndReport report;
  std::string home;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end()) return;
    AgentRecord record = std::move(it->second.record);
    residents_.erase(it);
    home = record.home;
    report.id = id;
    report.epoch = record.epoch;
    report.node = self();
    report.state = how;
    report.reason = reason;
    report.result = result.is_table() ? std::move(result) : Value::table();
    report.hops = std::move(record.hops);
    report.log = std::move(record.log);
    report.token = record.report_token;  // the home takes reports only from the agent's holder
    // The end in one transaction: the row's removal, the report owed to the home (until it
    // acknowledges it) and the kv writes of the step that ended it. If that cannot be
    // stored, the step's writes are dropped and the agent fails saying so.
    auto writes = resident_gone(id);
    if (store_) writes.push_back(end_row(home, report));
    Result<void> stored = step != nullptr ? kv_->commit(*step, writes) : store_ ? store_->write(writes) : Result<void>{};
    if (!stored) {
      log_error("agents", options_.name + ": agent " + id + ": " + stored.error().message);
      if (step != nullptr && store_) {  // (without a store a commit cannot fail)
        report.state = AgentState::failed;
        report.reason = "agent " + id + "'s step could not be stored at " + self() + ": " + stored.error().message;
        report.result = Value::table();
        writes = resident_gone(id);
        writes.push_back(end_row(home, report));
        if (auto again = store_->write(writes); !again) log_error("agents", options_.name + ": agent " + id + ": " + again.error().message);
      }
    }
  }
  log_info("agents", options_.name + ": agent " + id + " " + std::string(agent_state_name(report.state)) +
                         (report.reason.empty() ? "" : ": " + report.reason));
  if (counters_ != nullptr) {
    counters_->trace.add("end", id, home, std::string(agent_state_name(report.state)) + (report.reason.empty() ? "" : ": " + report.reason));
  }
  notify_home(home, report);
}

void AgentRuntime::wake_if_asleep(const std::string& id) {
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end() || it->second.status != AgentState::asleep || it->second.record.mailbox.empty()) return;
    it->second.status = AgentState::queued;
  }
  schedule_run(id);
}

}  // namespace sojourn
