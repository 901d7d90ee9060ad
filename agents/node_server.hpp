// Internal: a node's serving side: its listeners (TCP, TLS, in-process), the address it
// advertises, and each call or eval request from a peer, from its frame to its reply.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agents/metrics.hpp"
#include "agents/services.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "sojourn/transports/asio.hpp"
#include "sojourn/transports/link.hpp"

namespace sojourn {

class EvalQueue;
struct EvalJob;
class ModuleSource;
class NodeJails;
class NodeRuntime;
class NodeTrust;
struct PolicyRule;
struct NodeCounters;

class NodeServer final : public RequestHandler {
 public:
  NodeServer(const NodeOptions& options, NodeRuntime& runtime, const ServiceRegistry& services, NodeTrust& trust,
             NodeJails& jails, NodeCounters& counters);
  ~NodeServer() override;
  NodeServer(const NodeServer&) = delete;
  NodeServer& operator=(const NodeServer&) = delete;

  // The node this server belongs to: listeners hold it (as their handler) while they run.
  void set_owner(std::weak_ptr<void> owner) { owner_ = std::move(owner); }
  // Where code.require of a remote evaluation finds modules (set once, before listening).
  void set_modules(ModuleSource& modules) { modules_ = &modules; }

  // On the network thread: serves on `where`; returns the bound address. Errors:
  // tls_config, insecure_transport, the transport's.
  Result<std::string> listen(const Address& where);
  // The address peers reach this node at: options.advertise, else the first bound.
  std::string advertised() const;

  // RequestHandler: runs on the network thread. `peer` is who sent the request (over TLS,
  // with its proven identity): it goes with the request to what decides what it may do.
  asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind kind, std::vector<std::uint8_t> payload,
                                                            PeerIdentity peer) override;
  ReplyFault reply_fault(FrameKind kind, std::span<const std::uint8_t> payload) override;
  // A call of a service marked inline_on_network_thread (kv.get, say), or a small evaluation
  // at `trusted` that finishes within the inline budgets (try_inline_eval), served in place by
  // the connection's reader: no coroutine, no hop to a worker and back.
  std::optional<Result<std::vector<std::uint8_t>>> handle_now(FrameKind kind, std::span<const std::uint8_t> payload,
                                                              const PeerIdentity& peer) override;

  // Shutdown, on the network thread: stop accepting, then close every connection, then
  // (once the network thread ended) drop the listeners.
  void stop_accepting();
  void close_all();
  void clear();

  // The testing seam's fault hooks (node_testing.hpp), by called service.
  using DropHook = std::function<bool(std::string_view service)>;
  using DelayHook = std::function<std::chrono::milliseconds(std::string_view service)>;
  void set_fault_hooks(DropHook drop, DelayHook delay);

 private:
  asio::awaitable<Reply> serve_call(CallRequest request, const PeerIdentity& peer);
  asio::awaitable<Reply> serve_eval(EvalRequest request, const PeerIdentity& peer);
  // handle_now's half for an evaluation: its reply, or nullopt (it goes to handle()).
  std::optional<Result<std::vector<std::uint8_t>>> eval_now(std::span<const std::uint8_t> payload,
                                                            const PeerIdentity& peer);
  // The inline attempt itself unless the fast path looks saturated: a jailed evaluation back
  // to back with the last inline run, or a trusted one past the network thread's streak.
  std::optional<Reply> try_inline_unless_saturated(const EvalRequest& request, const PeerIdentity& peer);
  // A burst of queued evaluations on one worker (EvalQueue), in order.
  void run_eval_burst(std::span<EvalJob*> jobs);
  struct AdmittedEval;
  // Signature, freshness, policy and level of an evaluation: nullopt when it may run (and
  // `admitted` is filled), else its refusal.
  std::optional<Reply> admit_eval(const EvalRequest& request, const PeerIdentity& peer, AdmittedEval& admitted);
  // The fast path, on the network thread: the reply of a small unsigned evaluation at
  // `trusted` that stayed within the inline budgets and services, or nullopt when it must run
  // on a worker instead (nothing it did had an effect: it was stopped before any other call).
  // `trusted_only`: a jailed evaluation gives way at once (it joins the queued burst).
  std::optional<Reply> try_inline_eval(const EvalRequest& request, const PeerIdentity& peer, bool trusted_only = false);
  // The level a fast-path attempt runs at, decided without starting a jail: trusted, or
  // process (served only by a warm guest already waiting); nullopt leaves the request to
  // the worker path, which decides and reports refusals and missing levels as before.
  std::optional<Isolation> inline_level(const EvalRequest& request, const PolicyRule* rule) const;
  // The run's input, shared by both paths (`principal` must outlive it).
  sandbox::RunInput eval_input(const EvalRequest& request, const PolicyRule* rule, const std::string& principal) const;
  // The request's metrics (by service and outcome, errors by code) and its trace event.
  void count_request(const std::string& service, const Reply& reply, const PeerIdentity& peer);
  void count_bytes_in(std::size_t n);
  // Counts a served request and encodes its reply (an error if it would be too large).
  std::vector<std::uint8_t> finish_reply(const std::string& service, const Reply& reply, const PeerIdentity& peer);

  const NodeOptions& options_;
  NodeRuntime& runtime_;
  const ServiceRegistry& services_;
  NodeTrust& trust_;
  NodeJails& jails_;
  NodeCounters& counters_;
  ModuleSource* modules_ = nullptr;
  std::weak_ptr<void> owner_;

  // Network-thread state.
  std::chrono::steady_clock::time_point last_inline_end_{};  // the fast path's last attempt
  std::chrono::steady_clock::time_point inline_streak_start_{};  // the first of the attempts back to back
  // Series of the per-request metrics, found once (a series, once made, lives as long as
  // its family): counting a request then allocates nothing.
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::array<metrics::HistogramFamily::Series*, 3> inline_eval_seconds_{};  // by Isolation (trusted, process)
  std::atomic<std::uint64_t>* bytes_in_ = nullptr;
  std::atomic<std::uint64_t>* bytes_out_ = nullptr;
  std::unordered_map<std::string, std::atomic<std::uint64_t>*, NameHash, std::equal_to<>> served_ok_;  // by service
  // The network thread's lookups (handle_now's calls, an inline evaluation's node.call).
  ServiceLookupMemo call_memo_;
  ServiceLookupMemo inline_host_memo_;
  std::string last_ok_service_;                           // the service counted last, and its series
  std::atomic<std::uint64_t>* last_ok_counter_ = nullptr;
  bool last_ok_traced_ = false;  // whether that service's served requests go into the trace
  std::string_view last_ok_kind_;  // and their event's kind ("request", "eval")
  std::vector<std::unique_ptr<TcpServer>> servers_;
  std::unique_ptr<EvalQueue> eval_queue_;  // evaluations on their way to the workers
  std::vector<std::string> inproc_names_;

  mutable std::mutex advertised_mutex_;
  std::string advertised_;  // set once, by the first listen()

  std::mutex faults_mutex_;
  std::atomic<bool> faults_set_{false};  // a hook is set
  DropHook drop_hook_;
  DelayHook delay_hook_;
};

}  // namespace sojourn
