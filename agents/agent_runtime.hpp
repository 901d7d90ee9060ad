// Internal: mobile agents and code-on-demand inside a node. Resident agents and their runs
// (agent_runtime.cpp), the services peers call (agent_services.cpp), the exactly-once
// hand-over (migration.cpp), the home node's
// tracking and message forwarding (tracking.cpp), and bundles by fetch (code_on_demand.cpp).
#pragma once

#include <array>
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "agents/agent_messages.hpp"
#include "agents/agent_record.hpp"
#include "agents/code_cache.hpp"
#include "agents/image_staging.hpp"
#include "agents/node_host_calls.hpp"
#include "agents/node_jails.hpp"
#include "agents/node_runtime.hpp"
#include "agents/node_server.hpp"
#include "agents/node_stats.hpp"
#include "agents/node_trust.hpp"
#include "agents/peer_links.hpp"
#include "agents/services.hpp"
#include "agents/store/node_store.hpp"

namespace sojourn {

class NodeStore;
class KvStore;
class KvStep;

// The parts of its node the agent runtime uses, each role by reference (Node::Impl owns them).
struct AgentRuntimeRoles {
  const NodeOptions& options;
  NodeRuntime& runtime;
  ServiceRegistry& services;
  PeerLinks& links;
  NodeTrust& trust;
  NodeJails& jails;
  const NodeServer& server;  // the advertised address
  std::shared_ptr<NodeStore> store;  // NodeOptions::data_dir's store, else null
  std::shared_ptr<KvStore> kv;       // the node's kv store: a step's writes commit with its outcome
};

class AgentRuntime : public std::enable_shared_from_this<AgentRuntime>, public ModuleSource {
 public:
  explicit AgentRuntime(const AgentRuntimeRoles& roles);
  void register_services(Node& node);

  CodeCache& cache() { return cache_; }
  std::uint64_t bundles_sent() const { return bundles_sent_; }
  std::uint64_t resident_count();
  std::string self() const;  // the advertised address

  // Node API (blocking callers are never on the network thread). The agent.* services
  // decode their message once (register_services) and call these with the struct.
  Result<AgentLaunchAnswer> launch_here(const AgentLaunchRequest& request, const PeerIdentity& caller);
  // What a caller may see (docs/security.md, "Who sees an agent"): this node's own code and
  // a caller with the node's own TLS identity see every agent; another caller sees the
  // agents launched with its identity (over TLS, its key's fingerprint; unauthenticated
  // callers share one anonymous identity). status_of answers no_such_agent otherwise.
  Result<AgentStatus> status_of(std::string_view id, const PeerIdentity& caller);
  Result<std::vector<AgentSummary>> list(const PeerIdentity& caller);
  // How agent.list/agent.status and AgentRecord::launcher name a caller: "local" for this
  // node's own code, "tls:FINGERPRINT" over TLS, "" for an unauthenticated peer.
  static std::string viewer_of(const PeerIdentity& caller);
  bool sees_all(const PeerIdentity& caller) const;

  // code.require from Lua: the module's source for a run whose code came from `origin`
  // (empty: this node only), looking in `bundle` first.
  Result<Value> require_module(std::string_view name, const CachedBundle* bundle, const std::string& origin) override;
  // Fetch from a peer; on the network thread.
  struct Fetched {
    std::shared_ptr<const CachedBundle> bundle;
    bool code_received = false;  // false: the peer sent only the hash, found here
  };
  asio::awaitable<Result<Fetched>> fetch(std::string peer, std::string module);

  // Waiting for an agent's end, on the network thread (tracking.cpp). wait_here answers the
  // agent's status once it has ended (finished, failed, stranded) or after `wait`, woken by
  // the end itself; wait_agent does that at `home` (this node, or a peer's agent.wait,
  // repeated until `timeout`).
  asio::awaitable<Result<AgentStatus>> wait_here(std::string id, std::chrono::milliseconds wait, PeerIdentity caller);
  asio::awaitable<Result<AgentStatus>> wait_agent(std::string home, std::string id, std::chrono::milliseconds timeout);
  // Bounded state (docs/migration.md, "What a node remembers"): drops the COMMITs, highest
  // epochs and ended agents whose retention has passed. Runs on each insertion, on each
  // read of an ended agent and on a periodic timer (start_sweeps), which also drops the
  // replay guard's expired nonces.
  void prune();
  void start_sweeps();
  // With a store: takes back the agents this node is home to, as the store kept them
  // (agent_durable.cpp); called once, before the node serves. An entry that does not decode
  // is an error, never skipped.
  Result<void> load_durable();
  // Starts the resident agents load_durable took back (each from its last durable point);
  // at the first listen(), once the node has its address. Idempotent.
  void resume_durable();
  // At shutdown, on the network thread: cancels the sweep timer and wakes every waiter.
  void stop();
  std::uint64_t tracked_count();
  std::uint64_t commits_count();
  std::uint64_t epochs_count();
  // Observability (docs/observability.md): the node's metrics and trace, fed at the agents'
  // state changes; the dashboard's list of agents (resident here, or tracked here); the bytes
  // of resident agents' states.
  void set_counters(NodeCounters& counters) { counters_ = &counters; }
  std::vector<AgentStatus> dashboard_agents();
  // Testing seam (agents/node_testing.hpp): rewrites outgoing heap images.
  void set_image_hook(std::function<void(std::vector<std::uint8_t>&, std::string&)> hook) { image_hook_ = std::move(hook); }
  std::uint64_t resident_state_bytes();
  // Bytes of the heap images resident strong agents hold (their last image), for /metrics.
  std::uint64_t resident_image_bytes();

 private:
  struct Resident {
    AgentRecord record;
    std::shared_ptr<const CachedBundle> bundle;
    AgentState status = AgentState::queued;  // arriving, queued, running, asleep, moving or stranded
    std::string reason;
    std::int64_t since_unix_ms = 0;
    // Trust, for this visit: the policy rule its code runs under (null: no policy), the
    // instructions spent here so far, and its message rate.
    const PolicyRule* rule = nullptr;
    std::uint64_t hop_cpu_spent = 0;
    std::shared_ptr<RateLimiter> rate;
    // The heap image this node hashed whole and found to be the one record.image_sha256 names
    // (its TRANSFER's check) or sealed itself, held unchanged since (a pointer to const bytes):
    // while record.image is this very one, its resume spares the jail a second pass over it.
    // Not stored: after a restart an image is hashed again. Weak: it keeps no dropped image alive.
    std::weak_ptr<const std::vector<std::uint8_t>> hashed_image;
    // The message ids this visit's arrival answer handed over: the home may still resend
    // them, so record.delivered keeps them (trim_delivered).
    std::set<std::string> answer_ids;
    bool visit_counted = false;  // its first step here was counted (note_visit)
    // Its arrival here is not reported to its home yet: the report leaves as its first step
    // here starts (run_step), not before it (docs/migration.md), unless it is held.
    bool report_owed = false;
    // A weak agent's arrival taken on the network thread holds its report for kArrivalHold
    // (hold_arrival_report): a visit that ends by moving on within it is reported by the
    // next holder's report (its finished hops), not by a round trip of its own.
    std::shared_ptr<asio::steady_timer> report_hold;
    // That report's first try has not come back yet (report_arrival). A hand-over whose hop
    // trail has grown long waits for its answer (await_trail_ack), which sheds the hops the
    // home holds: without it, short steps leave every answer behind the agent and the trail,
    // which each TRANSFER and report carries, grows with the tour.
    bool arrival_in_flight = false;
    std::shared_ptr<asio::steady_timer> trail_wait;  // that hand-over's wait, when one waits
  };
  // The limits of one step, and which budget bounds its CPU.
  struct StepBudget {
    Limits limits;
    enum class Bound { run, hop, total } bound = Bound::run;
    std::string exhausted;  // non-empty: no budget left, why
  };
  struct Tracked {
    AgentStatus status;
    std::deque<ForwardedMessage> pending;
    std::set<std::string> message_ids;
    bool forwarding = false;
    // Who may report it (tracking.cpp, check_reporter): the token the holder of status.epoch
    // has, the one before it (that holder's retried arrival, whose answer it may have
    // missed), and over TLS that holder's identity.
    std::string token, previous_token;
    // Whether a report has shown `token` yet. Until one has, the holder may never have had the
    // answer that carried it (the home stored it and died before answering, or was away for
    // the holder's retries), so the agent's record still carries `previous_token`, which then
    // stays good for the later epochs too. In memory only: after a restart, not shown yet.
    bool token_shown = false;
    std::string holder_fingerprint;
    std::string launcher;  // AgentRecord::launcher
    // Retention once it ended (prune): when it ended and when its result was first read.
    std::int64_t ended_ms = 0, read_ms = 0;
    // The time of its one entry in due_ (0: none), so that a read, which brings its
    // forgetting forward, replaces that entry rather than leaving it behind. Not stored.
    std::int64_t due_ms = 0;
  };
  // What a destination remembers of a hand-over it committed (migration.cpp).
  struct Commit {
    AgentCommit reply;
    std::int64_t forget_at_ms = 0;
  };
  struct HighestEpoch {
    std::uint64_t epoch = 0;
    std::int64_t forget_at_ms = 0;
  };

  // agent_runtime.cpp
  void make_resident(AgentRecord record, std::shared_ptr<const CachedBundle> bundle, const PolicyRule* rule);
  // The agent's next step: on the network thread first when step_may_run_inline says so
  // (docs/migration.md, "The step on the network thread"), else on the worker pool. Takes
  // mutex_: a caller holding it calls schedule_worker_run.
  void schedule_run(const std::string& id);
  void schedule_worker_run(const std::string& id);
  // Under mutex_: a trusted weak step whose text the rule admits, with a small state, on a
  // node without a store, while the inline budgets are not 0.
  bool step_may_run_inline(const Resident& res);
  // `inline_attempt`: on the network thread, within the inline budgets, any host call refused;
  // past a budget or at a host call the attempt is dropped (nothing it did is kept) and the
  // step runs again, from the same record, on a worker.
  void run_step(const std::string& id, bool inline_attempt = false);
  void note_visit(const AgentRecord& record);
  // A step of the migration protocol in the trace file (docs/experiments.md, "Traces"):
  // written only while the node has a trace file. Without one it costs a null test, plus the
  // detail string the caller built (a few per hop, next to a round trip: not worth a lambda).
  void trace_step(const char* kind, const std::string& agent, const std::string& peer, std::string detail = {});
  // Whether this node keeps a trace file: a step's detail text is built only then.
  bool tracing() const { return counters_ != nullptr && counters_->trace.has_file(); }
  // `step`: the step's kv writes (kv.* calls go there, docs/reliability.md "Exactly-once steps").
  Result<Value> agent_host_call(const std::string& id, std::string_view service, const Value& args, KvStep& step);
  void wake_if_asleep(const std::string& id);
  // Finished or failed. `step`: the kv writes of the step that ended it, committed with the
  // end (the resident row removed) in one transaction.
  void finish(const std::string& id, AgentState how, const std::string& reason, Value result, KvStep* step = nullptr);

  // agent_budget.cpp
  // Checks an agent arriving (or launched) here: its bundle signature (cached), that its
  // budget is not above what its manifest (signed) sets, and the policy; lowers its hop
  // budget to the policy's. Returns its rule (null without a policy).
  Result<const PolicyRule*> admit_code(AgentRecord& record, const CachedBundle& bundle, const PeerIdentity& peer);
  StepBudget step_budget(const AgentRecord& record, const CachedBundle& bundle, const PolicyRule* rule,
                         std::uint64_t hop_spent);
  // What a step is charged: the larger of the guest's own count and what the host measured
  // (NodeOptions::instructions_per_cpu_ms).
  std::uint64_t charged_instructions(const sandbox::AgentOutcome& outcome) const;
  // Charges a step's instructions to the travelling and per-visit budgets (under mutex_).
  static void charge(Resident& resident, std::uint64_t instructions);
  std::string out_of_budget(const AgentRecord& record, const CachedBundle& bundle, StepBudget::Bound bound,
                            const PolicyRule* rule);

  // migration.cpp
  // A COMMIT, or a BundleWanted (nothing taken) when the TRANSFER lacks a bundle not cached here.
  Result<TransferReply> on_transfer(AgentTransfer transfer, const PeerIdentity& caller);
  // `resumed`: a hand-over taken back from the store, whose TRANSFERs before the restart
  // are unknown (it is offered to `peer` only, never to a fallback, while `peer` is silent).
  asio::awaitable<void> migrate(std::string id, std::string peer, std::string entry, bool resumed = false);
  // tracking.cpp: the report of an arrival (of `record`, resident here) to the agent's home,
  // sent once its first step here has started (run_step), and again after a restart.
  ArrivalReport arrival_report(const AgentRecord& record);
  asio::awaitable<void> report_arrival(std::string home, ArrivalReport report);
  // Under mutex_, as a TRANSFER taken on the network thread makes `res` resident: holds its
  // arrival report for kArrivalHold when the agent is weak, its home elsewhere and its hop
  // trail short (under kTrailWaitHops unacknowledged hops; a longer one is reported at once,
  // so that its answer sheds them). When the hold ends with the agent still here, the report
  // leaves then (or as its first step starts, if that has not yet); a step that ends by
  // sleeping sends it at once (release_report_hold); a hand-over drops it (drop_report_hold).
  void hold_arrival_report(const std::string& id, Resident& res);
  void end_report_hold(const std::string& id, std::uint64_t epoch);
  // Under mutex_: the held report of `res`, to send now (nullopt: none is held).
  std::optional<ArrivalReport> release_report_hold(Resident& res);
  // migrate's first step (network thread): the agent leaves before its hold ended.
  void drop_report_hold(const std::string& id);
  // Takes an arrival answer: the home's new token (if any) and the messages the agent has
  // not had yet, when the agent is still here at the report's epoch and not leaving (false
  // otherwise). The delivered ids the report listed, which the home has now dropped from its
  // pending messages and never resends, leave record.delivered; the finished hops it carried,
  // which the home now keeps, leave record.hops.
  // A leaving agent (its record about to be or already on the wire) still sheds those hops
  // and takes the token, in memory only: a hand-over that has not copied the record yet
  // carries them (await_trail_ack); its stored row keeps the longer trail, which the home
  // merges again without harm.
  bool take_messages(const std::string& id, const ArrivalReport& report, const std::vector<ForwardedMessage>& messages,
                     const std::string& token);
  // The first try of the arrival report of (id, epoch) has an outcome: a hand-over waiting
  // for it goes on (tracking.cpp).
  void arrival_settled(const std::string& id, std::uint64_t epoch);
  // migrate's first step: when the record carries kTrailWaitHops (or a multiple) finished
  // hops its home has not acknowledged and this visit's arrival report is still out, waits
  // (at most kTrailWaitLimit) for its answer. It bounds the trail to about kTrailWaitHops
  // whatever the tour's length, at the price of one wait of less than a round trip to the
  // home every kTrailWaitHops hops (none when steps outlast that round trip).
  asio::awaitable<void> await_trail_ack(std::string id);
  // Bounds record.delivered (under mutex_): the answer's ids, and the last kDeliveredWindow
  // ids forwarded one by one (the home resends only its pending front until it succeeds).
  static void trim_delivered(Resident& res);
  // A strong agent's image from its TRANSFER (or, when the TRANSFER carries none, the one
  // staged for it by agent.image_part) into its record, once its SHA-256 is the one the
  // record names (hash_mismatch otherwise); refuses an image a weak record does not name.
  // True when the pass proved the image's own header hash too (hashed_image).
  Result<bool> take_image(AgentTransfer& transfer, const std::string& what);
  Result<void> on_image_part(ImagePart part);
  // Sends a strong agent's image to `peer` in pieces ahead of its TRANSFER (migration.cpp).
  asio::awaitable<Result<void>> send_image_parts(const AgentRecord& record, std::span<const std::uint8_t> image,
                                                 const std::string& peer);
  // sandbox_refused "refused by the sandbox: image from guest build X, this node runs Y" for
  // an image taken by another guest executable: refused at the TRANSFER, so the agent stays
  // at its source (the step's own check behind it refuses the same).
  Result<void> check_image_build(const AgentRecord& record);
  // *transfer_sent: set once the TRANSFER is on its way (the destination may commit it).
  // `record` is lent to the TRANSFER and is as it was when this returns (no copy per try).
  asio::awaitable<Result<AgentCommit>> hand_over(AgentRecord& record, std::shared_ptr<const CachedBundle> bundle, std::string peer,
                                                 bool* transfer_sent);
  // The agent (still at `epoch`) stays here, stopped, and its home hears `reason`.
  void strand(const std::string& id, std::uint64_t epoch, const std::string& reason);

  // tracking.cpp
  // Gives the record its first report token; with a store, committed before it returns.
  Result<void> track_launch(AgentRecord& record);
  // not_permitted "not permitted: WHAT of agent ID (epoch N) from PEER: WHY" unless the
  // reporter holds the agent's current epoch (under mutex_).
  static Result<void> check_reporter(const Tracked& t, std::uint64_t epoch, const std::string& token,
                                     const PeerIdentity& caller, const char* what);
  Result<ArrivalAnswer> on_arrived(const ArrivalReport& report, const PeerIdentity& caller);
  Result<void> on_finished(const EndReport& report, const PeerIdentity& caller);
  Result<SendAnswer> on_send(const AgentSend& send);
  Result<void> on_deliver(const AgentDeliver& deliver);
  // Reports to the agent's home: answered here when this node is its home, else sent.
  void notify_home(const std::string& home, const ArrivalReport& report);
  void notify_home(const std::string& home, const EndReport& report);
  asio::awaitable<void> report_home(std::string home, std::string service, AgentMessageBytes message, int tries);
  // An end report to a remote home, tried until it is acknowledged or refused for good, or
  // for ended_agent_retention (then it stays owed in the store until the next start).
  asio::awaitable<void> send_end(std::string home, EndReport report);
  void kick_forwarding(const std::string& id);
  asio::awaitable<void> forward_messages(std::string id);

  // code_on_demand.cpp
  Result<FetchAnswer> on_fetch(const FetchQuery& query);

  // agent_durable.cpp (under mutex_; no-ops without a store). persist_tracked commits the
  // entry before the caller acknowledges what changed it; forget_tracked removes it.
  Result<void> persist_tracked(const std::string& id, const Tracked& t);
  // A weak resident agent (record, bundle hash, state, next entry, status; when moving, the
  // hand-over it is in): stored at its arrival or launch, after each step that parks or
  // moves it, and when a message reaches it; removed once it has left (after the COMMIT)
  // or ended. Strong agents are not stored (docs/reliability.md). Failures are logged.
  void persist_resident(const std::string& id, const Resident& res, const std::string& move_peer = {},
                        const std::string& move_entry = {});
  // The row persist_resident writes, as one write of a transaction (none for a strong agent
  // or without a store), and the row's removal.
  std::vector<NodeStore::Write> resident_row(const std::string& id, const Resident& res, const std::string& move_peer = {},
                                             const std::string& move_entry = {});
  std::vector<NodeStore::Write> resident_gone(const std::string& id);
  // A stored strong agent's image (agent_durable.cpp): checked against the record's hash and
  // this node's guest build, then set in the record. Errors say why it is refused.
  Result<void> restore_image(AgentRecord& record, std::span<const std::uint8_t> image);
  // A destination's dedup (migration.cpp): the COMMIT it sent for (id, epoch), kept until
  // `forget_at_ms` (the highest epochs are rebuilt from these rows), and the TRANSFER's
  // nonce until it expires; both in the transaction that makes the agent resident.
  NodeStore::Write commit_row(const std::string& id, std::uint64_t epoch, const AgentCommit& commit, std::int64_t forget_at_ms);
  NodeStore::Write commit_gone(const std::string& id, std::uint64_t epoch);
  static NodeStore::Write nonce_row(const std::string& nonce, std::int64_t expires_unix_ms);
  // An end report owed to the agent's home: stored with the end (finish), removed once the
  // home has acknowledged it or refused it for good (forget_end), sent again after a restart.
  NodeStore::Write end_row(const std::string& home, const EndReport& report);
  void forget_end(const std::string& id);
  void forget_resident(const std::string& id);
  void forget_tracked(const std::string& id);
  static std::vector<std::uint8_t> encode_tracked(const Tracked& t);
  static Result<Tracked> decode_tracked(std::span<const std::uint8_t> bytes);

  void spawn(asio::awaitable<void> task, const char* what);
  // The clock of retention and expiry: NodeOptions::expiry_clock, else Unix ms.
  std::int64_t now_ms() const;
  // Under mutex_.
  void remember_commit(const std::string& id, std::uint64_t epoch, const AgentCommit& commit);
  void mark_ended(const std::string& id, Tracked& t);  // wakes waiters, schedules forgetting
  std::int64_t forget_at(const Tracked& t) const;
  // Puts an ended agent's one due_ entry at forget_at(t), replacing the one it had.
  void schedule_forget(const std::string& id, Tracked& t);
  void prune_locked(std::int64_t now);
  void wake_waiters_locked(const std::string& id);

  const NodeOptions& options_;
  NodeRuntime& runtime_;
  ServiceRegistry& services_;
  PeerLinks& links_;
  NodeTrust& trust_;
  NodeJails& jails_;
  const NodeServer& server_;
  std::shared_ptr<NodeStore> store_;
  std::shared_ptr<KvStore> kv_;
  // Resident agents taken back from the store, started by resume_durable (under mutex_).
  struct Resumed {
    std::string id, move_peer, move_entry;
  };
  std::vector<Resumed> to_resume_;
  // End reports owed to homes, taken back from the store, sent by resume_durable.
  std::vector<std::pair<std::string, EndReport>> to_report_;
  bool resumed_ = false;
  NodeCounters* counters_ = nullptr;  // set once, before the network thread starts
  // The hop counters' and the step histogram's series, found once (each hop built their
  // label vectors and looked them up in the family's map): set by the first thread to need
  // one, the same pointer whichever thread does.
  std::atomic<std::atomic<std::uint64_t>*> hops_in_{nullptr}, hops_out_{nullptr};
  std::array<std::atomic<metrics::HistogramFamily::Series*>, 3> step_series_{};
  std::atomic<std::uint64_t>& hops_counter(bool in);
  metrics::HistogramFamily::Series& step_series(Isolation level);
  CodeCache cache_;
  // Each bundle's verdict of the inline step's text rule (inline_step_text), by bundle hash,
  // under mutex_; cleared when it holds kInlineVerdicts.
  std::unordered_map<std::string, bool> inline_verdicts_;
  std::atomic<std::uint64_t> bundles_sent_{0};
  std::mutex mutex_;
  std::unordered_map<std::string, Resident> residents_;
  std::map<std::pair<std::string, std::uint64_t>, Commit> commits_;  // (id, epoch) -> the COMMIT sent
  std::unordered_map<std::string, HighestEpoch> highest_epoch_;
  std::unordered_map<std::string, Tracked> tracked_;                  // agents whose home is here
  // When to look at an entry again (prune): by time, each naming a commit (id, epoch) or,
  // with `tracked` set, a tracked agent. An entry may be looked at and kept (read earlier).
  struct Due {
    std::string id;
    std::uint64_t epoch = 0;
    bool tracked = false;
  };
  std::multimap<std::int64_t, Due> due_;
  // Waiters for an agent's end (wait_here): their timers are cancelled, on the network
  // thread, when it ends. Bounded: past kMaxWaiters a wait answers at once.
  std::unordered_multimap<std::string, std::shared_ptr<asio::steady_timer>> waiters_;
  std::shared_ptr<asio::steady_timer> sweep_timer_;
  std::function<void(std::vector<std::uint8_t>&, std::string&)> image_hook_;  // set before agents run
  ImageStaging staged_images_;  // heap images arriving in pieces (agent.image_part)
};

}  // namespace sojourn
