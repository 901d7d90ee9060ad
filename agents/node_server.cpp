// A node's serving side: listening, and serving calls and evaluations to peers (node_server.hpp).
#include "agents/node_server.hpp"  // first: brings <utility> before any Asio header

#include <algorithm>
#include <array>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "agents/eval_queue.hpp"
#include "agents/inline_streak.hpp"
#include "agents/node_host_calls.hpp"
#include "agents/node_jails.hpp"
#include "agents/node_runtime.hpp"
#include "agents/node_stats.hpp"
#include "agents/on_workers.hpp"
#include "agents/node_trust.hpp"
#include "agents/services.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {

// A counter only the network thread writes (the series of the per-request metrics, the
// bytes, calls_served): a plain load and store, not a locked read-modify-write. Readers on
// other threads (/metrics, stats) still read whole values.
inline void add_on_network_thread(std::atomic<std::uint64_t>& counter, std::uint64_t by) {
  counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

// The most queued evaluations one worker takes at a time (EvalQueue): their replies go back
// together, so the first waits for the rest of its burst; a lone request is a burst of one.
// As many as one warm guest takes in one batch (channel::kMaxBatchRuns): at `process` each
// burst costs the worker, the guest and the network thread a wake-up and a task switch or
// two, whatever its length; with 8 a pipelining client's bursts were nearly always full
// (7.3 runs on average), with 32 they average ~16.
constexpr std::size_t kEvalBurst = 32;

bool is_loopback(const Address& a) {
  if (a.host == "localhost") return true;
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(a.host, ec);
  return !ec && ip.is_loopback();
}

}  // namespace

NodeServer::NodeServer(const NodeOptions& options, NodeRuntime& runtime, const ServiceRegistry& services,
                       NodeTrust& trust, NodeJails& jails, NodeCounters& counters)
    : options_(options), runtime_(runtime), services_(services), trust_(trust), jails_(jails), counters_(counters),
      eval_queue_(std::make_unique<EvalQueue>(runtime.workers(), std::max<std::size_t>(1, options.worker_threads),
                                              kEvalBurst, [this](std::span<EvalJob*> jobs) { run_eval_burst(jobs); })) {}

NodeServer::~NodeServer() = default;

std::string NodeServer::advertised() const {
  std::lock_guard lock(advertised_mutex_);
  return advertised_;
}

Result<std::string> NodeServer::listen(const Address& a) {
  std::shared_ptr<void> owner = owner_.lock();
  if (!owner) return errors::shutting_down();
  // The transports hold the node through its handler while a request runs.
  std::shared_ptr<RequestHandler> handler(owner, this);
  auto advertise = [&](const std::string& bound) {
    std::lock_guard lock(advertised_mutex_);
    if (advertised_.empty()) advertised_ = options_.advertise.empty() ? bound : options_.advertise;
  };
  if (a.kind == Address::Kind::inproc) {
    auto r = register_inproc(a.name, runtime_.executor(), handler);
    if (!r) return r.error();
    inproc_names_.push_back(a.name);
    advertise(a.to_string());
    return a.to_string();
  }
  if (trust_.tls_error()) return *trust_.tls_error();
  if (trust_.id_error()) return *trust_.id_error();
  const auto& tls = trust_.tls();
  if (!tls && !is_loopback(a) && !options_.insecure_plain_tcp) {
    return make_error(Errc::insecure_transport, "insecure transport: refusing plain TCP on " + a.to_string() +
                                                    ", which is not a loopback address: peers would be "
                                                    "unauthenticated and traffic readable; use --tls DIR (or --insecure)");
  }
  TransportOptions transport;
  transport.tls = tls;
  transport.max_payload = options_.max_payload;
  transport.max_connections = options_.max_connections;
  transport.connect_timeout = options_.connect_timeout;
  if (!options_.links.empty()) transport.links = std::make_shared<const LinkModel>(options_.links);
  std::weak_ptr<void> weak = owner_;
  NodeCounters* counters = &counters_;
  transport.on_refused = [weak, counters](const PeerIdentity&, const Error&) {
    if (auto alive = weak.lock()) {
      ++counters->connections_refused;
      counters->metrics.tls.inc({"node", "refused"});
    }
  };
  auto server = std::make_unique<TcpServer>(runtime_.executor(), handler, transport);
  auto bound = server->listen(a);
  if (!bound) return bound.error();
  if (tls) {
    const PeerIdentity& self = tls_local_identity(*tls);
    log_info("node", options_.name + ": mutual TLS on " + bound->to_string() + " as '" + self.name + "' [" +
                         self.fingerprint.substr(0, 12) + "], trusting " + tls_trust_summary(*tls));
  } else {
    log_warn("node", options_.name + ": PLAIN TCP on " + bound->to_string() +
                         ": peers are not authenticated and traffic is not encrypted (development only; use --tls DIR)");
  }
  servers_.push_back(std::move(server));
  if (is_wildcard(*bound)) {
    // Nobody can dial 0.0.0.0: others are given an address of this host's interfaces.
    std::string interface;
    const std::string stand_in = interface_address(*bound, &interface).to_string();
    advertise(stand_in);
    log_info("node", options_.name + " listening on " + bound->to_string() + " (every interface), advertised as " +
                         advertised() + (options_.advertise.empty() ? " (an address of interface " + interface +
                                                                          "; --advertise HOST:PORT chooses)"
                                                                    : " (--advertise)") +
                         ", node id " + trust_.node_id().substr(0, 16));
  } else {
    advertise(bound->to_string());
    log_info("node", options_.name + " listening on " + bound->to_string() + ", advertised as " + advertised() +
                         ", node id " + trust_.node_id().substr(0, 16));
  }
  return bound->to_string();
}

void NodeServer::stop_accepting() {
  for (auto& s : servers_) s->stop_accepting();
  for (const auto& n : inproc_names_) unregister_inproc(n);
}

void NodeServer::close_all() {
  for (auto& s : servers_) s->close_all();
}

void NodeServer::clear() { servers_.clear(); }

void NodeServer::set_fault_hooks(DropHook drop, DelayHook delay) {
  std::lock_guard lock(faults_mutex_);
  drop_hook_ = std::move(drop);
  delay_hook_ = std::move(delay);
  faults_set_.store(drop_hook_ || delay_hook_, std::memory_order_release);
}

RequestHandler::ReplyFault NodeServer::reply_fault(FrameKind kind, std::span<const std::uint8_t> payload) {
  ReplyFault fault;
  // Without hooks (a node outside tests) a request costs one load here, not a lock.
  if (kind != FrameKind::call || !faults_set_.load(std::memory_order_acquire)) return fault;
  std::lock_guard lock(faults_mutex_);
  if (!drop_hook_ && !delay_hook_) return fault;
  auto request = decode_call(payload);
  if (!request) return fault;
  if (drop_hook_) fault.drop = drop_hook_(request->service);
  if (delay_hook_) fault.delay = delay_hook_(request->service);
  return fault;
}

asio::awaitable<Result<std::vector<std::uint8_t>>> NodeServer::handle(FrameKind kind, std::vector<std::uint8_t> payload,
                                                                      PeerIdentity peer) {
  auto keep = owner_.lock();
  if (!keep) co_return errors::shutting_down();
  NodeRuntime::InFlight counted(runtime_);  // shutdown waits for this to reach zero
  Reply reply;
  std::string service = "eval";  // for the metrics and the trace
  count_bytes_in(payload.size());
  if (kind == FrameKind::call) {
    auto request = decode_call(payload);
    if (!request) co_return request.error();
    // Tested first: the message costs allocations on every request even when not logged.
    if (log_level() <= LogLevel::debug) log_debug("node", options_.name + ": call " + request->service + " from " + peer.to_string());
    service = request->service;
    reply = co_await serve_call(std::move(*request), peer);
    ++counters_.calls_served;
  } else if (kind == FrameKind::eval) {
    auto request = decode_eval(payload);
    if (!request) co_return request.error();
    if (log_level() <= LogLevel::debug) log_debug("node", options_.name + ": eval " + request->chunk_name + " from " + peer.to_string());
    reply = co_await serve_eval(std::move(*request), peer);
    ++counters_.evals_served;
  } else {
    co_return make_error(Errc::bad_kind, "unexpected frame kind " + std::string(frame_kind_name(kind)));
  }
  co_return finish_reply(service, reply, peer);
}

void NodeServer::count_bytes_in(std::size_t n) {
  if (!bytes_in_) bytes_in_ = &counters_.metrics.bytes.at({"in"});
  add_on_network_thread(*bytes_in_, n);
}

std::vector<std::uint8_t> NodeServer::finish_reply(const std::string& service, const Reply& reply,
                                                   const PeerIdentity& peer) {
  if (reply.code != Errc::ok) ++counters_.requests_failed;
  count_request(service, reply, peer);
  std::vector<std::uint8_t> bytes = encode(reply);
  if (bytes.size() > options_.max_payload) {
    bytes = encode(reply_error(errors::frame_too_large(bytes.size(), options_.max_payload)));
  }
  if (!bytes_out_) bytes_out_ = &counters_.metrics.bytes.at({"out"});
  add_on_network_thread(*bytes_out_, bytes.size());
  return bytes;
}

std::optional<Result<std::vector<std::uint8_t>>> NodeServer::handle_now(FrameKind kind,
                                                                        std::span<const std::uint8_t> payload,
                                                                        const PeerIdentity& peer) {
  if (kind == FrameKind::eval) return eval_now(payload, peer);
  if (kind != FrameKind::call) return std::nullopt;
  auto keep = owner_.lock();
  if (!keep || runtime_.shutting_down()) return std::nullopt;  // handle() gives the answer
  // The service's name alone decides whether the call is served here: read from the
  // payload's head, not by decoding the whole request. A call that goes to handle()
  // (agent.transfer with its agent's state, say) is then decoded once, there, not twice.
  // The network thread's memo of the last service called here: the same service again costs
  // no lock, hash or shared_ptr copy. It holds the entry until the next call's lookup.
  const ServiceEntry* entry = nullptr;
  if (const std::optional<std::string_view> name = peek_call_service(payload)) {
    entry = services_.lookup_memo(*name, call_memo_);
    // Anything else (a worker's service, one that waits, an unknown name) goes the usual way;
    // handle() decodes it in full and reports a malformed rest as before.
    if (!entry || entry->async_fn || !entry->options.inline_on_network_thread) return std::nullopt;
  }
  auto request = decode_call(payload);
  // A head too short for a name fails here with decode_call's own error, as before.
  if (!request) return Result<std::vector<std::uint8_t>>(request.error());
  if (!entry) return std::nullopt;  // not reached: a request that decodes has a readable name
  NodeRuntime::InFlight counted(runtime_);
  count_bytes_in(payload.size());
  if (log_level() <= LogLevel::debug) log_debug("node", options_.name + ": call " + request->service + " from " + peer.to_string());
  Result<Value> r = ServiceRegistry::invoke(request->service, entry->fn, request->args, peer);
  Reply reply = r ? reply_ok(std::move(*r)) : reply_error(r.error());
  add_on_network_thread(counters_.calls_served, 1);
  return Result<std::vector<std::uint8_t>>(finish_reply(request->service, reply, peer));
}

std::optional<Result<std::vector<std::uint8_t>>> NodeServer::eval_now(std::span<const std::uint8_t> payload,
                                                                      const PeerIdentity& peer) {
  auto keep = owner_.lock();
  if (!keep || runtime_.shutting_down()) return std::nullopt;  // handle() gives the answer
  // Cheap refusals of the fast path before decoding: no attempt, no note (handle() then
  // tries as it always did, and refuses the same way).
  if (options_.inline_eval_instructions == 0 || options_.inline_eval_wall_ms == 0) return std::nullopt;
  auto request = decode_eval(payload);
  if (!request) return std::nullopt;  // handle() reports the malformed request
  NodeRuntime::InFlight counted(runtime_);  // as in handle(): the run counts while it runs
  std::optional<Reply> fast = try_inline_unless_saturated(*request, peer);
  if (!fast) return std::nullopt;  // handle() runs it on a worker
  count_bytes_in(payload.size());
  if (log_level() <= LogLevel::debug) log_debug("node", options_.name + ": eval " + request->chunk_name + " from " + peer.to_string());
  ++counters_.evals_served;
  return Result<std::vector<std::uint8_t>>(finish_reply("eval", *fast, peer));
}

void NodeServer::count_request(const std::string& service, const Reply& reply, const PeerIdentity& peer) {
  NodeMetrics& m = counters_.metrics;
  if (reply.code == Errc::ok) {
    // A client's requests mostly repeat one service: compared, not hashed, when they do; the
    // series and whether the trace takes the request are found once for it.
    if (last_ok_counter_ == nullptr || service != last_ok_service_) {
      auto it = served_ok_.find(service);
      if (it == served_ok_.end()) it = served_ok_.emplace(service, &m.requests.at({service, "ok"})).first;
      last_ok_service_.assign(service);
      last_ok_counter_ = it->second;
      // The agent protocol's own chatter (reports, offers) stays out of the trace unless it
      // failed; a trace file keeps the protocol's steps too (set before the node serves).
      const bool protocol = service.rfind("agent.", 0) == 0 || service.rfind("code.", 0) == 0;
      last_ok_traced_ = !protocol || counters_.trace.has_file();
      last_ok_kind_ = service == "eval" ? "eval" : "request";
    }
    add_on_network_thread(*last_ok_counter_, 1);
    if (last_ok_traced_) {
      // An unauthenticated peer's name is its address: no string is built for it.
      if (!peer.authenticated()) {
        counters_.trace.add(last_ok_kind_, "", peer.address, service);
      } else {
        counters_.trace.add(last_ok_kind_, "", peer.to_string(), service);
      }
    }
    return;
  }
  m.requests.inc({service, std::string(errc_name(reply.code))});
  const std::string_view outcome = errc_name(reply.code);
  m.errors.inc({std::string(outcome)});
  if (reply.code == Errc::policy_refused) m.policy_refusals.inc({});
  counters_.trace.add("error", "", peer.to_string(), service + ": " + reply.message);
}

asio::awaitable<Reply> NodeServer::serve_call(CallRequest request, const PeerIdentity& peer) {
  if (runtime_.shutting_down()) co_return reply_error(errors::shutting_down());
  // One lookup: the entry is held (a later add() replaces it, not changes it).
  std::shared_ptr<const ServiceEntry> entry = services_.lookup(request.service);
  if (!entry) co_return reply_error(errors::no_such_service(request.service));
  const PeerService& fn = entry->fn;
  Result<Value> r = Value{};
  // Plain statements around co_await: g++ 12 miscompiles co_await inside a conditional expression.
  if (entry->async_fn) {
    r = co_await entry->async_fn(std::move(request.args), peer);
  } else if (entry->options.inline_on_network_thread) {
    r = ServiceRegistry::invoke(request.service, fn, request.args, peer);
  } else {
    r = co_await on_workers(runtime_.workers(), [&] { return ServiceRegistry::invoke(request.service, fn, request.args, peer); });
  }
  co_return r ? reply_ok(std::move(*r)) : reply_error(r.error());
}

std::optional<Reply> NodeServer::try_inline_unless_saturated(const EvalRequest& request, const PeerIdentity& peer) {
  // Back to back (inline_streak.hpp), as when a client pipelines: a jailed evaluation joins
  // the workers' burst, which runs in one warm guest; a trusted one keeps running here for a
  // streak. Handing every other one to a worker cost the node twice the CPU per pipelined
  // evaluation (a wake-up and a context switch each way: 0.4 switches per request against
  // 0.02, `perf stat`), more than the second core gave back.
  const InlineTurn turn = inline_turn(std::chrono::steady_clock::now(), last_inline_end_, inline_streak_start_);
  if (turn == InlineTurn::workers) return std::nullopt;
  std::optional<Reply> fast = try_inline_eval(request, peer, /*trusted_only=*/turn == InlineTurn::trusted_only);
  last_inline_end_ = std::chrono::steady_clock::now();
  if (fast) ++counters_.evals_inline;
  return fast;
}

asio::awaitable<Reply> NodeServer::serve_eval(EvalRequest request, const PeerIdentity& peer) {
  if (runtime_.shutting_down()) co_return reply_error(errors::shutting_down());
  // No inline attempt here: the server asked handle_now (eval_now) first (link.hpp), and a
  // second attempt would hold the network thread for a second budget.
  // Signature checks cost tens of microseconds: on the workers, with the run. Queued: a
  // pipelining client's evaluations run back to back on one worker, a burst at a time.
  Reply reply = co_await eval_queue_->run(request, peer);
  co_return reply;
}

// An evaluation admitted to run: its level, principal, input and host calls.
struct NodeServer::AdmittedEval {
  Isolation level = Isolation::trusted;
  std::string principal;  // input.principal views it: an AdmittedEval never moves once filled
  sandbox::RunInput input;
  std::unique_ptr<NodeHostCalls> host;
};

// The policy decides by the author's key (a signed chunk) and the sender's TLS identity.
// nullopt when the evaluation may run (`admitted` filled), else the refusal.
std::optional<Reply> NodeServer::admit_eval(const EvalRequest& request, const PeerIdentity& peer, AdmittedEval& admitted) {
  // A signed chunk: its signature, then its freshness (a bad signature never uses up a nonce).
  std::string signer;
  if (!request.signer.empty()) {
    if (auto good = verify_eval_signature(request); !good) return reply_error(good.error());
    // Addressed to this node: a copy captured on its way elsewhere does not run here (before
    // the nonce, which it would otherwise use up).
    if (auto addressed = check_addressed_to(request.destination, trust_.node_id(), "this signed remote evaluation");
        !addressed) {
      return reply_error(addressed.error());
    }
    if (auto fresh = trust_.replay().admit(request.nonce, request.expires_unix_ms, "remote evaluation"); !fresh) {
      return reply_error(fresh.error());
    }
    signer = key_fingerprint(request.signer);
  }
  const PolicyRule* rule = trust_.rule_for(signer, peer);
  if (rule != nullptr && rule->refuse) return reply_error(policy_refusal(*rule, trust_.describe_code(signer)));
  // The chunk came from a peer: it runs at least at options.peer_isolation (or as the policy
  // says), never at less than it asked for; a level this node cannot offer is refused, never
  // downgraded.
  Result<Isolation> level = trust_.level_for(request.isolation, rule);
  if (!level) return reply_error(level.error());
  admitted.level = *level;
  // Warm guests serve one principal: the signer, else the authenticated peer, else anyone
  // anonymous (docs/jails.md).
  admitted.principal = !signer.empty()           ? "signer " + signer
                       : peer.authenticated() ? "peer " + peer.fingerprint
                                              : std::string("anonymous");
  admitted.input = eval_input(request, rule, admitted.principal);
  // `node.call` reaches this node: the code went to the resource.
  admitted.host = std::make_unique<NodeHostCalls>(services_, *modules_, nullptr, std::string{}, rule);
  return std::nullopt;
}

void NodeServer::run_eval_burst(std::span<EvalJob*> jobs) {
  // On the stack for a burst of the usual size: a vector of them (~1.7 KB) was a large-bin
  // malloc, and glibc consolidates its fast bins before each one (malloc_consolidate, 2-3% of
  // a pipelined trusted REV's CPU, perf).
  std::array<std::optional<AdmittedEval>, kEvalBurst> on_stack;
  std::vector<std::optional<AdmittedEval>> on_heap;
  if (jobs.size() > on_stack.size()) on_heap.resize(jobs.size());
  const std::span<std::optional<AdmittedEval>> admitted =
      jobs.size() > on_stack.size() ? std::span(on_heap) : std::span(on_stack).first(jobs.size());
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    try {
      admitted[i].emplace();
      if (std::optional<Reply> refused = admit_eval(*jobs[i]->request, *jobs[i]->peer, *admitted[i])) {
        jobs[i]->reply = std::move(*refused);
        jobs[i]->finished = true;
        admitted[i].reset();
      }
    } catch (...) {
      jobs[i]->failed = std::current_exception();
      jobs[i]->finished = true;
      admitted[i].reset();
    }
  }
  // Consecutive admitted evaluations of one principal at one level run together: at
  // `process`, in one warm guest at once (NodeJails::run_chunk_burst), in arrival order.
  for (std::size_t i = 0; i < jobs.size();) {
    if (!admitted[i]) {
      ++i;
      continue;
    }
    std::size_t end = i + 1;
    while (end < jobs.size() && admitted[end] && admitted[end]->level == admitted[i]->level &&
           admitted[end]->principal == admitted[i]->principal) {
      ++end;
    }
    std::vector<const sandbox::RunInput*> inputs;
    std::vector<sandbox::HostCalls*> hosts;
    for (std::size_t k = i; k < end; ++k) {
      inputs.push_back(&admitted[k]->input);
      hosts.push_back(admitted[k]->host.get());
    }
    const Isolation level = admitted[i]->level;
    const std::string level_name(isolation_name(level));
    try {
      const auto started = std::chrono::steady_clock::now();
      std::vector<Result<Value>> results = jails_.run_chunk_burst(level, inputs, hosts);
      // A burst's runs are observed at its time shared out evenly (no run's own is known).
      const auto each = (std::chrono::steady_clock::now() - started) / static_cast<int>(end - i);
      for (std::size_t k = i; k < end; ++k) {
        counters_.metrics.eval_seconds.observe({level_name}, each);
        if (level != Isolation::trusted) counters_.metrics.jail_starts.inc({level_name});
        Result<Value>& r = results[k - i];
        Reply reply = r ? reply_ok(std::move(*r)) : reply_error(r.error());
        reply.isolation = level;
        jobs[k]->reply = std::move(reply);
        jobs[k]->finished = true;
      }
    } catch (...) {
      for (std::size_t k = i; k < end; ++k) {
        if (!jobs[k]->finished) jobs[k]->failed = std::current_exception();
        jobs[k]->finished = true;
      }
    }
    i = end;
  }
}

sandbox::RunInput NodeServer::eval_input(const EvalRequest& request, const PolicyRule* rule,
                                         const std::string& principal) const {
  sandbox::RunInput input;
  input.source = request.source;
  input.chunk_name = request.chunk_name.empty() ? std::string_view("eval") : std::string_view(request.chunk_name);
  input.args = request.args.is_table() ? request.args : Value::table();
  // One evaluation is one visit: the per-hop CPU quota bounds it too.
  input.limits = effective_limits(request.limits, options_.default_limits, trust_.run_ceiling(rule, /*whole_visit=*/true));
  input.allow_jit = false;  // code from a peer: compiled loops would escape the CPU hook
  input.abort = runtime_.abort_flag();
  input.max_result_bytes = options_.max_payload;  // the reply carries the result: no larger
  input.principal = principal;
  return input;
}

namespace {

// node.call for an inline attempt: the cheap in-memory reads run; any other service (a
// write, a module, a service that may block) is not called at all: the attempt gives way and
// the evaluation starts again on a worker. Giving way is recorded here, not only returned,
// so that a chunk that catches the error (pcall) is still run again.
class InlineHostCalls final : public sandbox::HostCalls {
 public:
  InlineHostCalls(const ServiceRegistry& services, ServiceLookupMemo& memo, const PolicyRule* rule, bool node_info_cheap)
      : services_(services), memo_(memo), rule_(rule), rate_(rule != nullptr ? rule->quotas.messages_per_second : 0),
        node_info_cheap_(node_info_cheap) {}

  Result<Value> call(std::string_view service, const Value& args) override {
    if (gave_way_) return give_way();
    // node.info asks the jails for the peer level, which may start them when no level is
    // configured: only where that answer is already fixed.
    const bool readonly = service == "kv.get" || service == "kv.keys" || (service == "node.info" && node_info_cheap_);
    if (!readonly) return give_way();
    // The policy's grants, as on a worker (a refusal is the same answer on both paths).
    if (auto granted = check_grant(rule_, rate_, service); !granted) return granted.error();
    // The network thread's memo: a run's reads (and the next run's) find kv.get without the
    // registry's lock; the entry stays held by the memo while it runs (kv.get calls no service).
    const ServiceEntry* entry = services_.lookup_memo(service, memo_);
    if (entry == nullptr) return errors::no_such_service(service);
    // A service the node's owner replaced with one not marked cheap runs on a worker.
    if (!entry->options.inline_on_network_thread || entry->async_fn || entry->options.peers_only) return give_way();
    return ServiceRegistry::invoke(service, entry->fn, args, PeerIdentity{"local"});
  }

  // Carried reads: the same services as answered here (kv.get), never after giving way.
  bool carries(std::string_view service) const override { return !gave_way_ && may_carry(services_, rule_, service, true); }
  std::optional<Value> read_ahead(std::string_view service, const Value& args) override {
    if (gave_way_) return std::nullopt;
    return carry_read(services_, rule_, service, args, true);
  }

  bool gave_way() const { return gave_way_; }

 private:
  Error give_way() {
    gave_way_ = true;
    return make_error(Errc::internal, "not on the network thread");
  }

  const ServiceRegistry& services_;
  ServiceLookupMemo& memo_;
  const PolicyRule* rule_;
  RateLimiter rate_;
  bool node_info_cheap_;
  bool gave_way_ = false;
};

}  // namespace

std::optional<Isolation> NodeServer::inline_level(const EvalRequest& request, const PolicyRule* rule) const {
  std::optional<Isolation> level;
  if (rule != nullptr) {
    // A refusal is the worker path's to report.
    if (rule->refuse) return std::nullopt;
    for (Isolation l : rule->isolation) {
      if (l >= request.isolation) {
        level = l;
        break;
      }
    }
  } else if (options_.peer_isolation) {
    level = std::max(request.isolation, *options_.peer_isolation);
  } else if (std::optional<Isolation> known = jails_.known_peer_level()) {
    level = std::max(request.isolation, *known);
  }
  if (level != Isolation::trusted && level != Isolation::process) return std::nullopt;
  return level;
}

std::optional<Reply> NodeServer::try_inline_eval(const EvalRequest& request, const PeerIdentity& peer, bool trusted_only) {
  // Only unsigned code (a signature check would cost the network thread tens of microseconds
  // and use up a nonce), at `trusted`, or at `process` in a warm guest already waiting: the
  // level is decided without starting a jail, and nothing here forks or waits for a guest.
  if (options_.inline_eval_instructions == 0 || options_.inline_eval_wall_ms == 0) return std::nullopt;
  if (!request.signer.empty()) return std::nullopt;
  const PolicyRule* rule = trust_.rule_for({}, peer);
  const std::optional<Isolation> level = inline_level(request, rule);
  if (!level) return std::nullopt;
  // A jailed evaluation joins those queued or running (a burst in one warm guest) rather than
  // taking a warm guest for itself; a trusted one still runs here when the network thread is
  // free (queuing it behind a burst cost a pipelining client ~20% of its rate at `trusted`).
  if (*level != Isolation::trusted && (trusted_only || eval_queue_->busy())) return std::nullopt;
  const std::string principal = peer.authenticated() ? "peer " + peer.fingerprint : std::string("anonymous");
  sandbox::RunInput input = eval_input(request, rule, principal);
  const Limits full = input.limits;
  input.limits.cpu_instructions = std::min(full.cpu_instructions, options_.inline_eval_instructions);
  input.limits.wall_ms = std::min(full.wall_ms, options_.inline_eval_wall_ms);
  InlineHostCalls host(services_, inline_host_memo_, rule, options_.peer_isolation.has_value());
  const auto started = std::chrono::steady_clock::now();
  Result<Value> r = Value{};
  if (*level == Isolation::trusted) {
    r = jails_.run_chunk(Isolation::trusted, input, &host);
  } else {
    // The guest's own hook stops it at the inline budgets (and it stays warm); one that does
    // not stop (inside a C function) is killed the budget's own length later, not the jail's
    // usual grace: the network thread waits for it.
    std::optional<Result<Value>> warm = jails_.run_chunk_if_warm(input, &host, static_cast<std::uint32_t>(input.limits.wall_ms));
    if (!warm) return std::nullopt;
    r = std::move(*warm);
  }
  if (host.gave_way()) return std::nullopt;
  if (!r) {
    // Out of the inline budget but not of the request's own: the worker runs it in full.
    if (r.error().code == Errc::cpu_limit && input.limits.cpu_instructions < full.cpu_instructions) return std::nullopt;
    if (r.error().code == Errc::deadline && input.limits.wall_ms < full.wall_ms) return std::nullopt;
  }
  // The level's series, found once: observing then takes no lock and allocates nothing.
  auto*& series = inline_eval_seconds_[static_cast<std::size_t>(*level)];
  if (series == nullptr) series = &counters_.metrics.eval_seconds.at({std::string(isolation_name(*level))});
  metrics::HistogramFamily::observe(*series, std::chrono::steady_clock::now() - started);
  if (*level != Isolation::trusted) counters_.metrics.jail_starts.inc({std::string(isolation_name(*level))});
  Reply reply = r ? reply_ok(std::move(*r)) : reply_error(r.error());
  reply.isolation = *level;
  return reply;
}

}  // namespace sojourn
