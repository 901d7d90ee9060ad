// Internal: the state behind Node, as the composition of one object per role: threads and
// lifecycle (node_runtime.hpp), services (services.hpp), jails (node_jails.hpp), trust
// (node_trust.hpp), client links (peer_links.hpp), serving (node_server.hpp), statistics
// (node_stats.hpp) and mobile agents (agent_runtime.hpp). Each role gets the others it
// needs by reference; only Node's own functions reach through Node::Impl.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "agents/http/dashboard.hpp"
#include "agents/node_jails.hpp"
#include "agents/node_runtime.hpp"
#include "agents/node_server.hpp"
#include "agents/node_stats.hpp"
#include "agents/node_trust.hpp"
#include "agents/peer_links.hpp"
#include "agents/services.hpp"
#include "sojourn/agents/node.hpp"

namespace sojourn {

class AgentRuntime;
class NodeStore;
class KvStore;

// Declared in that order: each role is made after (and destroyed before) those it uses.
struct Node::Impl {
  explicit Impl(NodeOptions o)
      : options(std::move(o)),
        runtime(options.worker_threads),
        jails(options),
        trust(options, jails),
        links(options, runtime, trust),
        server(options, runtime, services, trust, jails, counters) {}

  NodeOptions options;
  NodeRuntime runtime;
  NodeCounters counters;
  ServiceRegistry services;
  // The durable store (agents/store/node_store.hpp) with NodeOptions::data_dir, else null;
  // store_error: why the data dir's store cannot be used (then nothing pretends to be durable).
  std::shared_ptr<NodeStore> store;
  std::optional<Error> store_error;
  // The kv store (agents/store/kv_store.hpp), its clients' services and agent steps' writes.
  std::shared_ptr<KvStore> kv;
  NodeJails jails;
  NodeTrust trust;
  PeerLinks links;
  NodeServer server;
  std::shared_ptr<AgentRuntime> agents;  // mobile agents and code-on-demand
  // The read-only HTTP side (NodeOptions::http), started by the first listen(); network thread.
  std::unique_ptr<DashboardServer> http;
  std::mutex http_mutex;
  std::string http_bound;  // under http_mutex
};

}  // namespace sojourn
