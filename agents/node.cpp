// Node: the public API's lifecycle, listening, services and statistics, over the roles
// Node::Impl composes (node_impl.hpp).
#include "agents/node_impl.hpp"  // first: brings <utility> before any Asio header
#include "agents/agent_runtime.hpp"
#include "agents/heap_retention.hpp"
#include "agents/node_testing.hpp"
#include "agents/store/kv_store.hpp"
#include "agents/store/node_store.hpp"

#include <algorithm>

#include "sojourn/core/log.hpp"

namespace sojourn {

// malloc's settings first (before the first large message: a hop's buffers stay mapped),
// and before Impl starts the worker threads, which take an arena at their first allocation.
Node::Node(NodeOptions options)
    : impl_((static_cast<void>(retain_freed_heap_memory()), std::make_shared<Impl>(std::move(options)))) {
  impl_->links.set_owner(impl_);
  impl_->server.set_owner(impl_);
  Impl& i = *impl_;
  if (!i.options.data_dir.empty()) {
    auto store = NodeStore::open(i.options.data_dir, i.options.durability);
    if (store) {
      i.store = std::shared_ptr<NodeStore>(std::move(*store));
    } else {
      i.store_error = store.error();
    }
  }
  auto store_failed = [&i](const Error& e) {
    if (!i.store_error) i.store_error = e;
    log_error("node", i.options.name + ": " + e.message + "; the node refuses to serve rather than lose state");
  };
  if (i.store_error) store_failed(*i.store_error);
  i.kv = std::make_shared<KvStore>(i.options.kv_max_bytes, i.store, &i.store_error);
  if (i.store && !i.store_error) {
    if (auto loaded = i.kv->load(); !loaded) store_failed(loaded.error());
  }
  if (auto kv = register_builtin_services(*this, i.counters, i.services, i.jails, i.kv); !kv) store_failed(kv.error());
  impl_->agents = std::make_shared<AgentRuntime>(
      AgentRuntimeRoles{i.options, i.runtime, i.services, i.links, i.trust, i.jails, i.server, i.store, i.kv});
  impl_->server.set_modules(*impl_->agents);
  impl_->agents->set_counters(impl_->counters);
  impl_->agents->register_services(*this);
  if (i.store && !i.store_error) {
    if (auto loaded = impl_->agents->load_durable(); !loaded) store_failed(loaded.error());
  }
  impl_->agents->start_sweeps();
  if (!impl_->options.trace.empty()) {
    if (auto why = impl_->counters.trace.open_file(impl_->options.trace, impl_->options.name); !why.empty()) log_error("node", why);
  }
  impl_->runtime.start();  // the network thread, until shutdown
}

Node::~Node() { shutdown(std::chrono::milliseconds(0)); }

const std::string& Node::name() const { return impl_->options.name; }
const NodeOptions& Node::options() const { return impl_->options; }

void Node::register_service(std::string name, Service service, ServiceOptions options) {
  PeerService fn = [service = std::move(service)](const Value& args, const PeerIdentity&) { return service(args); };
  register_service(std::move(name), std::move(fn), options);
}

void Node::register_service(std::string name, PeerService service, ServiceOptions options) {
  impl_->services.add(std::move(name), ServiceEntry{std::move(service), options, {}});
}

Result<std::string> Node::listen(std::string_view address) {
  auto addr = parse_address(address);
  if (!addr) return addr.error();
  if (impl_->runtime.shutting_down()) return errors::shutting_down();
  if (impl_->store_error) return *impl_->store_error;
  if (!impl_->counters.trace.file_error().empty()) return errors::invalid_argument(impl_->counters.trace.file_error());
  auto impl = impl_;
  return impl_->runtime.run_on_network_thread([impl, a = *addr]() -> Result<std::string> {
    auto bound = impl->server.listen(a);
    // Agents taken back from the data dir run once the node has its address.
    if (bound) impl->agents->resume_durable();
    if (!bound || impl->options.http.empty() || impl->http) return bound;
    if (auto served = serve_http(impl); !served) return served.error();
    return bound;
  });
}

// On the network thread: the dashboard, /metrics and the JSON API (docs/observability.md),
// over the node's TLS when it has one.
Result<void> Node::serve_http(const std::shared_ptr<Impl>& impl) {
  auto where = parse_address(impl->options.http);
  if (!where) return where.error();
  std::weak_ptr<Impl> weak = impl;
  auto router = [weak](std::string_view target) {
    auto alive = weak.lock();
    if (!alive) return HttpResponse{503, "text/plain", "node is shutting down\n"};
    return route_dashboard(DashboardSources{alive->options, alive->runtime, alive->counters, *alive->agents, alive->jails}, target);
  };
  auto server = std::make_unique<DashboardServer>(impl->runtime, impl->counters, impl->options, std::move(router));
  auto bound = server->listen(*where, impl->trust.tls());
  if (!bound) return bound.error();
  log_info("node", impl->options.name + ": dashboard on " + std::string(impl->trust.tls() ? "https://" : "http://") + *bound + "/");
  impl->http = std::move(server);
  std::lock_guard lock(impl->http_mutex);
  impl->http_bound = *bound;
  return {};
}

Result<std::string> Node::storage() const {
  if (impl_->store_error) return *impl_->store_error;
  if (!impl_->store) return std::string("in memory (no --data-dir): a restart loses its kv store and agents");
  return impl_->store->path() + " (SQLite, WAL, durability " +
         (impl_->store->durability() == Durability::full ? "full" : "normal") + ")";
}

std::string Node::http_address() const {
  std::lock_guard lock(impl_->http_mutex);
  return impl_->http_bound;
}

Result<Value> Node::call_local(std::string_view service, const Value& args) {
  return impl_->services.call_local(service, args);
}

IsolationLevels Node::isolation_levels() { return impl_->jails.levels(); }

Isolation Node::peer_isolation() { return impl_->jails.node_peer_level(); }

bool Node::running() const { return !impl_->runtime.shutting_down(); }

NodeStats Node::stats() const {
  const NodeCounters& c = impl_->counters;
  NodeStats s;
  s.calls_served = c.calls_served;
  s.evals_served = c.evals_served;
  s.evals_inline = c.evals_inline;
  s.requests_failed = c.requests_failed;
  s.in_flight = impl_->runtime.in_flight();
  s.connections_refused = c.connections_refused;
  s.bundles_sent = impl_->agents->bundles_sent();
  s.agents_resident = impl_->agents->resident_count();
  s.bundles_cached = impl_->agents->cache().entries();
  s.agents_tracked = impl_->agents->tracked_count();
  s.commits_remembered = impl_->agents->commits_count();
  s.epochs_remembered = impl_->agents->epochs_count();
  s.nonces_remembered = impl_->trust.replay().remembered();
  return s;
}

void Node::shutdown(std::chrono::milliseconds grace) {
  auto impl = impl_;
  NodeRuntime& runtime = impl->runtime;
  std::call_once(runtime.shutdown_once, [&] {
    runtime.begin_shutdown();
    runtime.run_on_network_thread([impl] {
      impl->server.stop_accepting();
      if (impl->http) impl->http->stop();
      impl->agents->stop();  // the sweep timer; agent.wait requests answer now, not after the grace
    });
    // Waits on the node's events (the last request ending, the network thread ending).
    if (!runtime.wait_idle(grace)) {
      log_warn("node", impl->options.name + ": " + std::to_string(runtime.in_flight()) +
                           " requests still running after the grace period; ending them");
      runtime.abort_runs();  // running chunks end with "node is shutting down"
      runtime.wait_idle(std::chrono::milliseconds(2000));
    }
    // Agent steps are no requests: with a data dir a running one is stopped now, and runs
    // again from its last durable point after a restart (docs/reliability.md).
    if (impl->store) runtime.abort_runs();
    // Connections close once their last reply is written; outgoing links close now.
    runtime.run_on_network_thread([impl] {
      impl->links.close_all();
      impl->server.close_all();
    });
    runtime.stop(std::chrono::milliseconds(1000));
    impl->server.clear();
  });
}

Node::Impl& node_impl(Node& node) { return *node.impl_; }

}  // namespace sojourn

namespace sojourn {

bool IsolationLevels::has(Isolation level) const {
  return std::find(available.begin(), available.end(), level) != available.end();
}

std::string IsolationLevels::why_missing() const {
  std::string text;
  for (const auto& [level, reason] : missing) {
    text += (text.empty() ? "" : "; ") + std::string(isolation_name(level)) + ": " + reason;
  }
  return text;
}

void testing::set_fault_hooks(Node& node, std::function<bool(std::string_view service)> drop,
                              std::function<std::chrono::milliseconds(std::string_view service)> delay) {
  node_impl(node).server.set_fault_hooks(std::move(drop), std::move(delay));
}

void testing::set_image_hook(Node& node, std::function<void(std::vector<std::uint8_t>&, std::string&)> rewrite) {
  node_impl(node).agents->set_image_hook(std::move(rewrite));
}

}  // namespace sojourn
