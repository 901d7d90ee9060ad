// Internal: the state behind Node, shared by node.cpp (serving), node_client.cpp
// (calling peers) and builtin_services.cpp.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "sojourn/transports/asio.hpp"  // <utility> before Asio, see there

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include "agents/trust.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/signature.hpp"
#include "sojourn/sandbox/jail.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "sojourn/transports/link.hpp"

namespace sojourn {

class AgentRuntime;
struct CachedBundle;

// What the node's jails start with: its guest binary, room for its largest run, its name.
sandbox::JailConfig node_jail_config(const NodeOptions& options);

// A protocol service that answers later without holding a worker (agent.wait): it runs on
// the network thread.
using AsyncPeerService = std::function<asio::awaitable<Result<Value>>(Value args, PeerIdentity caller)>;

struct ServiceEntry {
  PeerService fn;
  ServiceOptions options;
  AsyncPeerService async_fn;  // set: serve_call awaits it instead of running fn
};

struct Node::Impl : RequestHandler, std::enable_shared_from_this<Node::Impl> {
  explicit Impl(NodeOptions o);

  // RequestHandler: runs on the network thread.
  // `peer` is who sent the request (over TLS, with its proven identity): it goes with
  // the request to what decides what the peer may do.
  asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind kind, std::vector<std::uint8_t> payload,
                                                            PeerIdentity peer) override;
  asio::awaitable<Reply> serve_call(CallRequest request, const PeerIdentity& peer);
  asio::awaitable<Reply> serve_eval(EvalRequest request, const PeerIdentity& peer);
  Reply run_eval(const EvalRequest& request, const PeerIdentity& peer);

  // Client side, on the network thread.
  asio::awaitable<Result<Value>> call_peer(std::string peer, std::string service, Value args);
  asio::awaitable<Result<Value>> eval_peer(std::string peer, std::string source, Value args, EvalOptions options);
  asio::awaitable<Result<EvalResult>> evaluate_peer(std::string peer, std::string source, Value args, EvalOptions options);
  asio::awaitable<Result<Reply>> request_peer(const std::string& peer, FrameKind kind, std::vector<std::uint8_t> payload,
                                              std::chrono::milliseconds timeout);

  Result<ServiceEntry> find_service(std::string_view service) const;
  static Result<Value> invoke(std::string_view service, const PeerService& fn, const Value& args, const PeerIdentity& caller);
  Result<Value> call_local(std::string_view service, const Value& args);
  // node.call from Lua: protocol services (peers_only) are not reachable.
  Result<Value> call_from_lua(std::string_view service, const Value& args);
  TransportOptions transport_options() const;

  // Trust. The policy rule for code signed by `signer` (a key fingerprint, empty: unsigned)
  // from `peer` (its TLS identity, when authenticated); null without a policy.
  const PolicyRule* rule_for(std::string_view signer, const PeerIdentity& peer) const;
  // The level such code runs at: without a rule, peer_level(asked); with one, the first of
  // its levels that is at least `asked` and available here, else policy_refused.
  Result<Isolation> level_for(Isolation asked, const PolicyRule* rule);
  // The most one run may use: max_limits, lowered by the rule's per-run quotas.
  // The most one run may use: max_limits, lowered by the rule's quotas (and, for a run that
  // is a whole visit, such as one remote evaluation, by its per-hop CPU quota).
  Limits run_ceiling(const PolicyRule* rule, bool whole_visit = false) const;
  // "unsigned code" or "code signed by NAME", for messages.
  std::string describe_code(std::string_view signer) const;

  // Jails. The level code from a peer runs at: the stronger of what it asked for and the
  // node's peer level; an error when this node cannot offer it.
  Result<Isolation> peer_level(Isolation asked);
  // options.peer_isolation, or when it is unset the strongest level this node has (microvm
  // where KVM can run the guest, else process), decided once.
  Isolation node_peer_level();
  // Why `level` cannot run here (its jail did not start), or null when it can (jails.unavailable).
  const std::string* unavailable(Isolation level) { return jails.unavailable(level); }
  // One chunk or one agent step at a level (through jails).
  Result<Value> run_chunk(Isolation level, const sandbox::RunInput& input, sandbox::HostCalls* host);
  Result<sandbox::AgentOutcome> run_agent_step(Isolation level, const sandbox::RunInput& input,
                                               const sandbox::AgentInput& agent, sandbox::HostCalls* host);

  NodeOptions options;
  // Made from options.tls at construction; when that failed, tls_error says why and
  // listen() and calls to peers return it.
  std::shared_ptr<const TlsContext> tls;
  std::optional<Error> tls_error;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  // Node::shutdown waits on `idle` for in_flight to reach zero and for the network thread
  // to end (network_ended); both are signalled, never polled. Declared before `io`:
  // requests destroyed with `io` still signal them.
  std::mutex idle_mutex;
  std::condition_variable idle;
  bool network_ended = false;  // under idle_mutex
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  asio::thread_pool workers;
  std::thread network_thread;

  mutable std::shared_mutex services_mutex;
  std::unordered_map<std::string, ServiceEntry> services;

  // Network-thread state.
  std::vector<std::unique_ptr<TcpServer>> servers;
  std::vector<std::string> inproc_names;
  std::unordered_map<std::string, std::shared_ptr<Link>> links;

  std::atomic<bool> shutting_down{false};
  std::atomic<bool> abort_runs{false};  // seen by running Lua chunks
  std::atomic<std::uint64_t> in_flight{0};
  std::atomic<std::uint64_t> calls_served{0};
  std::atomic<std::uint64_t> evals_served{0};
  std::atomic<std::uint64_t> requests_failed{0};
  std::atomic<std::uint64_t> connections_refused{0};
  std::once_flag shutdown_once;

  SignatureCache signatures;             // bundles verified here, by (hash, signer)
  ReplayGuard replay;                    // nonces of signed requests and transfers
  std::shared_ptr<AgentRuntime> agents;  // mobile agents and code-on-demand
  // One jail per isolation level, each started on first use (node_jails.cpp).
  sandbox::JailSet jails{node_jail_config(options)};
  std::once_flag peer_level_once;
  Isolation resolved_peer_level = Isolation::process;
  std::string advertised;                // set once, by the first listen() (network thread)
  mutable std::mutex advertised_mutex;
};

// What Lua code run by this node reaches: `node.call` gets the node's services (not the
// peers-only protocol services), and `require_remote` the modules of `bundle` (if any), of
// this node, then of `origin` (if any). Used for remote evaluations and fetched modules.
// With a policy rule, only the services it grants, at most at its message rate.
class NodeHostCalls final : public sandbox::HostCalls {
 public:
  NodeHostCalls(Node::Impl& impl, const CachedBundle* bundle, std::string origin, const PolicyRule* rule = nullptr)
      : impl_(impl), bundle_(bundle), origin_(std::move(origin)), rule_(rule),
        rate_(rule != nullptr ? rule->quotas.messages_per_second : 0) {}
  Result<Value> call(std::string_view service, const Value& args) override;

 private:
  Node::Impl& impl_;
  const CachedBundle* bundle_;
  std::string origin_;
  const PolicyRule* rule_;
  RateLimiter rate_;
};

// What the policy lets code call: service_not_granted "service NAME is not granted to this
// code by the node's policy", or the rate limiter's quota_exhausted. Ok without a rule.
Result<void> check_grant(const PolicyRule* rule, RateLimiter& rate, std::string_view service);


// Registers kv.get/put/del/keys and node.info on a new node.
void register_builtin_services(Node& node, Node::Impl& impl);

}  // namespace sojourn
