// Node: lifecycle, listening, and serving calls and evaluations to peers.
#include "agents/agent_runtime.hpp"
#include "agents/node_impl.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "sojourn/core/log.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn {

namespace {

// Counts a request in flight; the last one to end wakes a waiting shutdown.
struct InFlightGuard {
  explicit InFlightGuard(Node::Impl& i) : impl(i) { ++impl.in_flight; }
  ~InFlightGuard() {
    if (--impl.in_flight != 0) return;
    // Under the mutex: a shutdown that just saw a non-zero count is waiting by now.
    std::lock_guard lock(impl.idle_mutex);
    impl.idle.notify_all();
  }
  InFlightGuard(const InFlightGuard&) = delete;
  InFlightGuard& operator=(const InFlightGuard&) = delete;
  Node::Impl& impl;
};

// Runs f on the worker pool and resumes the caller on its own executor afterwards.
// (`co_await post(pool, use_awaitable)` would not do: an awaitable always resumes on
// the coroutine's executor, so the work would run on the network thread.)
template <class F>
asio::awaitable<std::invoke_result_t<F>> on_workers(asio::thread_pool& pool, F f) {
  using R = std::invoke_result_t<F>;
  co_return co_await asio::co_spawn(
      pool, [f = std::move(f)]() mutable -> asio::awaitable<R> { co_return f(); }, asio::use_awaitable);
}

}  // namespace

Node::Impl::Impl(NodeOptions o)
    : options(std::move(o)), workers(std::max<std::size_t>(1, options.worker_threads)), replay(options.max_message_lifetime, options.expiry_clock) {
  if (options.tls.enabled()) {
    auto context = make_tls_context(options.tls);
    if (context) {
      tls = std::move(*context);
    } else {
      tls_error = context.error();
      log_error("node", options.name + ": " + context.error().message);
    }
  }
}

TransportOptions Node::Impl::transport_options() const {
  TransportOptions t;
  t.tls = tls;
  t.max_payload = options.max_payload;
  t.max_connections = options.max_connections;
  t.connect_timeout = options.connect_timeout;
  if (options.fault_drop_reply) {
    t.drop_reply = [fault = options.fault_drop_reply](FrameKind kind, std::span<const std::uint8_t> payload) {
      if (kind != FrameKind::call) return false;
      auto request = decode_call(payload);
      return request.ok() && fault(request->service);
    };
  }
  if (options.fault_delay_reply) {
    t.delay_reply = [fault = options.fault_delay_reply](FrameKind kind, std::span<const std::uint8_t> payload) {
      if (kind != FrameKind::call) return std::chrono::milliseconds(0);
      auto request = decode_call(payload);
      return request.ok() ? fault(request->service) : std::chrono::milliseconds(0);
    };
  }
  return t;
}

Result<ServiceEntry> Node::Impl::find_service(std::string_view service) const {
  std::shared_lock lock(services_mutex);
  auto it = services.find(std::string(service));
  if (it == services.end()) return errors::no_such_service(service);
  return it->second;
}

Result<Value> Node::Impl::invoke(std::string_view service, const PeerService& fn, const Value& args,
                                 const PeerIdentity& caller) {
  try {
    return fn(args.is_table() ? args : Value::table(), caller);
  } catch (const std::exception& e) {
    return make_error(Errc::service_failed, "service " + std::string(service) + " failed: " + e.what());
  }
}

namespace {
const PeerIdentity& local_caller() {
  static const PeerIdentity local{"local", {}, {}};
  return local;
}
}  // namespace

Result<Value> Node::Impl::call_local(std::string_view service, const Value& args) {
  auto entry = find_service(service);
  if (!entry) return entry.error();
  return invoke(service, entry->fn, args, local_caller());
}

Result<Value> Node::Impl::call_from_lua(std::string_view service, const Value& args) {
  auto entry = find_service(service);
  if (!entry || entry->options.peers_only) return errors::no_such_service(service);
  return invoke(service, entry->fn, args, local_caller());
}

asio::awaitable<Result<std::vector<std::uint8_t>>> Node::Impl::handle(FrameKind kind, std::vector<std::uint8_t> payload,
                                                                      PeerIdentity peer) {
  auto self = shared_from_this();
  InFlightGuard counted(*this);  // shutdown waits for this to reach zero
  Reply reply;
  if (kind == FrameKind::call) {
    auto request = decode_call(payload);
    if (!request) co_return request.error();
    log_debug("node", options.name + ": call " + request->service + " from " + peer.to_string());
    reply = co_await serve_call(std::move(*request), peer);
    ++calls_served;
  } else if (kind == FrameKind::eval) {
    auto request = decode_eval(payload);
    if (!request) co_return request.error();
    log_debug("node", options.name + ": eval " + request->chunk_name + " from " + peer.to_string());
    reply = co_await serve_eval(std::move(*request), peer);
    ++evals_served;
  } else {
    co_return make_error(Errc::bad_kind, "unexpected frame kind " + std::string(frame_kind_name(kind)));
  }
  if (reply.code != Errc::ok) ++requests_failed;
  std::vector<std::uint8_t> bytes = encode(reply);
  if (bytes.size() > options.max_payload) {
    bytes = encode(reply_error(make_error(Errc::frame_too_large, "frame payload of " + std::to_string(bytes.size()) +
                                                                   " bytes exceeds the limit of " +
                                                                   std::to_string(options.max_payload) + " bytes")));
  }
  co_return bytes;
}

asio::awaitable<Reply> Node::Impl::serve_call(CallRequest request, const PeerIdentity& peer) {
  if (shutting_down) co_return reply_error(errors::shutting_down());
  // One lookup: the entry (and its function) is copied out of the registry.
  Result<ServiceEntry> entry = find_service(request.service);
  if (!entry) co_return reply_error(entry.error());
  PeerService fn = std::move(entry->fn);
  Result<Value> r = Value{};
  // Plain statements around co_await: g++ 12 miscompiles co_await inside a conditional expression.
  if (entry->async_fn) {
    r = co_await entry->async_fn(std::move(request.args), peer);
  } else if (entry->options.inline_on_network_thread) {
    r = invoke(request.service, fn, request.args, peer);
  } else {
    r = co_await on_workers(workers, [&] { return invoke(request.service, fn, request.args, peer); });
  }
  co_return r ? reply_ok(std::move(*r)) : reply_error(r.error());
}

asio::awaitable<Reply> Node::Impl::serve_eval(EvalRequest request, const PeerIdentity& peer) {
  if (shutting_down) co_return reply_error(errors::shutting_down());
  // Signature checks cost tens of microseconds: on the workers, with the run.
  Reply reply = co_await on_workers(workers, [this, &request, &peer] { return run_eval(request, peer); });
  co_return reply;
}

// The policy decides by the author's key (a signed chunk) and the sender's TLS identity.
Reply Node::Impl::run_eval(const EvalRequest& request, const PeerIdentity& peer) {
  // A signed chunk: its signature, then its freshness (a bad signature never uses up a nonce).
  std::string signer;
  if (!request.signer.empty()) {
    if (auto good = verify_eval_signature(request); !good) return reply_error(good.error());
    // Addressed to this node: a copy captured on its way elsewhere does not run here (before
    // the nonce, which it would otherwise use up).
    if (auto addressed = check_addressed_to(request.destination, agents->self(), "this signed remote evaluation");
        !addressed) {
      return reply_error(addressed.error());
    }
    if (auto fresh = replay.admit(request.nonce, request.expires_unix_ms, "remote evaluation"); !fresh) {
      return reply_error(fresh.error());
    }
    signer = key_fingerprint(request.signer);
  }
  const PolicyRule* rule = rule_for(signer, peer);
  if (rule != nullptr && rule->refuse) return reply_error(policy_refusal(*rule, describe_code(signer)));
  // The chunk came from a peer: it runs at least at options.peer_isolation (or as the policy
  // says), never at less than it asked for; a level this node cannot offer is refused, never
  // downgraded.
  Result<Isolation> level = level_for(request.isolation, rule);
  if (!level) return reply_error(level.error());
  sandbox::RunInput input;
  input.source = request.source;
  input.chunk_name = request.chunk_name.empty() ? std::string_view("eval") : std::string_view(request.chunk_name);
  input.args = request.args.is_table() ? request.args : Value::table();
  // One evaluation is one visit: the per-hop CPU quota bounds it too.
  input.limits = effective_limits(request.limits, options.default_limits, run_ceiling(rule, /*whole_visit=*/true));
  input.allow_jit = false;  // code from a peer: compiled loops would escape the CPU hook
  input.abort = &abort_runs;
  input.max_result_bytes = options.max_payload;  // the reply carries the result: no larger
  NodeHostCalls host(*this, nullptr, {}, rule);  // `node.call` reaches this node: the code went to the resource
  Result<Value> r = run_chunk(*level, input, &host);
  Reply reply = r ? reply_ok(std::move(*r)) : reply_error(r.error());
  reply.isolation = *level;
  return reply;
}

namespace {
bool is_loopback(const Address& a) {
  if (a.host == "localhost") return true;
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(a.host, ec);
  return !ec && ip.is_loopback();
}

// Runs f on the network thread and waits for its result (directly when already there).
template <class F>
auto on_network_thread(Node::Impl& impl, F f) -> decltype(f()) {
  if (impl.io.get_executor().running_in_this_thread()) return f();
  // A packaged_task given to post() directly would be taken as a completion token.
  auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
  auto result = task->get_future();
  asio::post(impl.io, [task] { (*task)(); });
  return result.get();
}
}  // namespace

Node::Node(NodeOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {
  register_builtin_services(*this, *impl_);
  impl_->agents = std::make_shared<AgentRuntime>(*impl_);
  impl_->agents->register_services(*this);
  impl_->agents->start_sweeps();
  // The network thread runs until shutdown; the work guard keeps run() from returning early.
  impl_->work.emplace(impl_->io.get_executor());
  impl_->network_thread = std::thread([impl = impl_.get()] {
    impl->io.run();
    std::lock_guard lock(impl->idle_mutex);
    impl->network_ended = true;
    impl->idle.notify_all();
  });
}

Node::~Node() { shutdown(std::chrono::milliseconds(0)); }

const std::string& Node::name() const { return impl_->options.name; }
const NodeOptions& Node::options() const { return impl_->options; }

void Node::register_service(std::string name, Service service, ServiceOptions options) {
  PeerService fn = [service = std::move(service)](const Value& args, const PeerIdentity&) { return service(args); };
  register_service(std::move(name), std::move(fn), options);
}

void Node::register_service(std::string name, PeerService service, ServiceOptions options) {
  std::unique_lock lock(impl_->services_mutex);
  impl_->services[std::move(name)] = ServiceEntry{std::move(service), options};
}

Result<std::string> Node::listen(std::string_view address) {
  auto addr = parse_address(address);
  if (!addr) return addr.error();
  if (impl_->shutting_down) return errors::shutting_down();
  auto impl = impl_;
  auto task = [impl, a = *addr]() -> Result<std::string> {
    if (a.kind == Address::Kind::inproc) {
      auto r = register_inproc(a.name, impl->io.get_executor(), impl);
      if (!r) return r.error();
      impl->inproc_names.push_back(a.name);
      std::lock_guard lock(impl->advertised_mutex);
      if (impl->advertised.empty()) impl->advertised = impl->options.advertise.empty() ? a.to_string() : impl->options.advertise;
      return a.to_string();
    }
    if (impl->tls_error) return *impl->tls_error;
    if (!impl->tls && !is_loopback(a) && !impl->options.insecure_plain_tcp) {
      return make_error(Errc::insecure_transport, "insecure transport: refusing plain TCP on " + a.to_string() +
                                                      ", which is not a loopback address: peers would be "
                                                      "unauthenticated and traffic readable; use --tls DIR (or --insecure)");
    }
    TransportOptions transport = impl->transport_options();
    std::weak_ptr<Node::Impl> weak = impl;
    transport.on_refused = [weak](const PeerIdentity&, const Error&) {
      if (auto i = weak.lock()) ++i->connections_refused;
    };
    auto server = std::make_unique<TcpServer>(impl->io.get_executor(), impl, transport);
    auto bound = server->listen(a);
    if (!bound) return bound.error();
    if (impl->tls) {
      const PeerIdentity& self = tls_local_identity(*impl->tls);
      log_info("node", impl->options.name + ": mutual TLS on " + bound->to_string() + " as '" + self.name + "' [" +
                           self.fingerprint.substr(0, 12) + "], trusting " + tls_trust_summary(*impl->tls));
    } else {
      log_warn("node", impl->options.name + ": PLAIN TCP on " + bound->to_string() +
                           ": peers are not authenticated and traffic is not encrypted (development only; use --tls DIR)");
    }
    impl->servers.push_back(std::move(server));
    {
      std::lock_guard lock(impl->advertised_mutex);
      if (impl->advertised.empty()) impl->advertised = impl->options.advertise.empty() ? bound->to_string() : impl->options.advertise;
    }
    log_info("node", impl->options.name + " listening on " + bound->to_string());
    return bound->to_string();
  };
  return on_network_thread(*impl_, task);
}

Result<Value> Node::call_local(std::string_view service, const Value& args) { return impl_->call_local(service, args); }

bool Node::running() const { return !impl_->shutting_down; }

NodeStats Node::stats() const {
  NodeStats s{impl_->calls_served, impl_->evals_served, impl_->requests_failed, impl_->in_flight};
  s.connections_refused = impl_->connections_refused;
  s.bundles_sent = impl_->agents->bundles_sent();
  s.agents_resident = impl_->agents->resident_count();
  s.bundles_cached = impl_->agents->cache().entries();
  s.agents_tracked = impl_->agents->tracked_count();
  s.commits_remembered = impl_->agents->commits_count();
  return s;
}

void Node::shutdown(std::chrono::milliseconds grace) {
  auto impl = impl_;
  std::call_once(impl->shutdown_once, [&] {
    impl->shutting_down = true;
    on_network_thread(*impl, [impl] {
      for (auto& s : impl->servers) s->stop_accepting();
      impl->agents->stop();  // the sweep timer; agent.wait requests answer now, not after the grace
      for (const auto& n : impl->inproc_names) unregister_inproc(n);
    });
    // Waits on the node's events (the last request ending, the network thread ending).
    auto wait_until = [&](std::chrono::milliseconds budget, auto done) {
      std::unique_lock lock(impl->idle_mutex);
      return impl->idle.wait_for(lock, budget, done);
    };
    auto idle = [&] { return impl->in_flight == 0; };
    if (!wait_until(grace, idle)) {
      log_warn("node", impl->options.name + ": " + std::to_string(impl->in_flight.load()) +
                           " requests still running after the grace period; ending them");
      impl->abort_runs = true;  // running chunks end with "node is shutting down"
      wait_until(std::chrono::milliseconds(2000), idle);
    }
    // Connections close once their last reply is written; outgoing links close now.
    on_network_thread(*impl, [impl] {
      for (auto& [peer, link] : impl->links) link->close();
      impl->links.clear();
      for (auto& s : impl->servers) s->close_all();
    });
    impl->workers.join();
    // With the guard gone, run() returns once every connection and timer has finished.
    impl->work.reset();
    if (!wait_until(std::chrono::milliseconds(1000), [&] { return impl->network_ended; })) impl->io.stop();
    if (impl->network_thread.joinable()) impl->network_thread.join();
    impl->servers.clear();
  });
}

Node::Impl& node_impl(Node& node) { return *node.impl_; }

}  // namespace sojourn
