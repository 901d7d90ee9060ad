// Internal: mobile agents and code-on-demand inside a node. Resident agents and their runs
// (agent_runtime.cpp), the exactly-once hand-over (migration.cpp), the home node's
// tracking and message forwarding (tracking.cpp), and bundles by fetch (code_on_demand.cpp).
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "agent_record.hpp"
#include "code_cache.hpp"
#include "node_impl.hpp"

namespace sojourn {

// The status of an agent that called agent.wait and has no message yet.
inline constexpr const char* kAsleep = "waiting for a message";

class AgentRuntime : public std::enable_shared_from_this<AgentRuntime> {
 public:
  explicit AgentRuntime(Node::Impl& impl);
  void register_services(Node& node);

  CodeCache& cache() { return cache_; }
  std::uint64_t bundles_sent() const { return bundles_sent_; }
  std::uint64_t resident_count();
  std::string self() const;  // the advertised address

  // Node API (blocking callers are never on the network thread).
  Result<Value> launch_here(const Value& request, const PeerIdentity& caller);
  // What a caller may see (docs/security.md, "Who sees an agent"): this node's own code and
  // a caller with the node's own TLS identity see every agent; another caller sees the
  // agents launched with its identity (over TLS, its key's fingerprint; unauthenticated
  // callers share one anonymous identity). status_of answers no_such_agent otherwise.
  Result<Value> status_of(std::string_view id, const PeerIdentity& caller);
  Result<Value> list(const PeerIdentity& caller);
  // How agent.list/agent.status and AgentRecord::launcher name a caller: "local" for this
  // node's own code, "tls:FINGERPRINT" over TLS, "" for an unauthenticated peer.
  static std::string viewer_of(const PeerIdentity& caller);
  bool sees_all(const PeerIdentity& caller) const;

  // code.require from Lua: the module's source for a run whose code came from `origin`
  // (empty: this node only), looking in `bundle` first.
  Result<Value> require_module(std::string_view name, const CachedBundle* bundle, const std::string& origin);
  // Fetch from a peer; on the network thread.
  struct Fetched {
    std::shared_ptr<const CachedBundle> bundle;
    bool code_received = false;  // false: the peer sent only the hash, found here
  };
  asio::awaitable<Result<Fetched>> fetch(std::string peer, std::string module);

 private:
  struct Resident {
    AgentRecord record;
    std::shared_ptr<const CachedBundle> bundle;
    std::string status;  // "running", "moving", "stranded", "waiting"
    std::string reason;
    std::int64_t since_unix_ms = 0;
    // Trust, for this visit: the policy rule its code runs under (null: no policy), the
    // instructions spent here so far, and its message rate.
    const PolicyRule* rule = nullptr;
    std::uint64_t hop_cpu_spent = 0;
    std::shared_ptr<RateLimiter> rate;
  };
  // The limits of one step, and which budget bounds its CPU.
  struct StepBudget {
    Limits limits;
    enum class Bound { run, hop, total } bound = Bound::run;
    std::string exhausted;  // non-empty: no budget left, why
  };
  struct PendingMessage {
    std::string id;
    Value body;
  };
  struct Tracked {
    AgentStatus status;
    std::deque<PendingMessage> pending;
    std::set<std::string> message_ids;
    bool forwarding = false;
    // Who may report it (tracking.cpp, check_reporter): the token the holder of status.epoch
    // has, the one before it (that holder's retried arrival, whose answer it may have
    // missed), and over TLS that holder's identity.
    std::string token, previous_token;
    std::string holder_fingerprint;
    std::string launcher;  // AgentRecord::launcher
  };

  // agent_runtime.cpp
  void make_resident(AgentRecord record, std::shared_ptr<const CachedBundle> bundle, const PolicyRule* rule);
  void schedule_run(const std::string& id);
  void run_step(const std::string& id);
  Result<Value> agent_host_call(const std::string& id, std::string_view service, const Value& args);
  void wake_if_asleep(const std::string& id);
  void finish(const std::string& id, const std::string& status, const std::string& reason, Value result);

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
  Result<Value> on_offer(const Value& request);
  Result<Value> on_transfer(const Value& request, const PeerIdentity& caller);
  asio::awaitable<void> migrate(std::string id, std::string peer, std::string entry);
  asio::awaitable<void> arrive(std::string id);
  // Appends the messages of an arrival answer that the agent has not had yet.
  void take_messages(const std::string& id, const Value& messages);
  asio::awaitable<Result<Value>> hand_over(AgentRecord record, std::shared_ptr<const CachedBundle> bundle, std::string peer);
  // The agent (still at `epoch`) stays here, stopped, and its home hears `reason`.
  void strand(const std::string& id, std::uint64_t epoch, const std::string& reason);

  // tracking.cpp
  void track_launch(AgentRecord& record);  // gives the record its first report token
  // not_permitted "not permitted: WHAT of agent ID (epoch N) from PEER: WHY" unless the
  // reporter holds the agent's current epoch (under mutex_).
  static Result<void> check_reporter(const Tracked& t, const Value& request, const PeerIdentity& caller, const char* what);
  Result<Value> on_arrived(const Value& request, const PeerIdentity& caller);
  Result<Value> on_finished(const Value& request, const PeerIdentity& caller);
  Result<Value> on_send(const Value& request);
  Result<Value> on_deliver(const Value& request);
  void notify_home(const std::string& home, std::string service, Value args);
  asio::awaitable<void> report_home(std::string home, std::string service, Value args);
  void kick_forwarding(const std::string& id);
  asio::awaitable<void> forward_messages(std::string id);

  // code_on_demand.cpp
  Result<Value> on_fetch(const Value& request);

  void spawn(asio::awaitable<void> task, const char* what);

  Node::Impl& impl_;
  CodeCache cache_;
  std::atomic<std::uint64_t> bundles_sent_{0};
  std::mutex mutex_;
  std::unordered_map<std::string, Resident> residents_;
  std::map<std::pair<std::string, std::uint64_t>, Value> commits_;  // (id, epoch) -> the COMMIT sent
  std::unordered_map<std::string, std::uint64_t> highest_epoch_;
  std::unordered_map<std::string, Tracked> tracked_;                 // agents whose home is here
};

}  // namespace sojourn
