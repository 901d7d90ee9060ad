// Node: the runtime an application or the `sojourn node` daemon runs. It serves its
// services and Lua evaluations to peers, and calls and evaluates on peers. This
// header is the blocking API; node_async.hpp has the coroutine API.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn {

// A C++ service. `args` is an array table of the caller's arguments. Services run
// concurrently on the node's worker threads (and from Lua code calling node.call):
// they must be thread-safe.
using Service = std::function<Result<Value>(const Value& args)>;

struct ServiceOptions {
  // Cheap, non-blocking services may run on the network thread and skip a thread hop.
  bool inline_on_network_thread = false;
};

struct NodeOptions {
  std::string name = "node";
  // Limits of one evaluation when the request leaves them at zero...
  Limits default_limits{100'000'000, 64u << 20, 5'000};
  // ...and the most a request may ask for.
  Limits max_limits{2'000'000'000, 1u << 30, 60'000};
  // Threads that run Lua chunks and services (never the network thread).
  std::size_t worker_threads = 2;
  std::uint32_t max_payload = 16u << 20;
  // Bytes the built-in kv store may hold (keys + encoded values); kv.put past it fails.
  std::size_t kv_max_bytes = 64u << 20;
  std::chrono::milliseconds connect_timeout{3'000};
  std::chrono::milliseconds request_timeout{30'000};
};

struct EvalOptions {
  Limits limits;  // zero fields: the serving node's defaults
  Isolation isolation = Isolation::trusted;
  std::string chunk_name;  // "eval" when empty
  std::chrono::milliseconds timeout{0};  // zero: NodeOptions::request_timeout
};

struct NodeStats {
  std::uint64_t calls_served = 0;
  std::uint64_t evals_served = 0;
  std::uint64_t requests_failed = 0;
  std::uint64_t in_flight = 0;
};

class Node {
 public:
  explicit Node(NodeOptions options = {});
  ~Node();  // shutdown(0) if still running
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  const std::string& name() const;
  const NodeOptions& options() const;

  // Adds or replaces a service. Names are dotted ("kv.get"); the built-in services
  // kv.get, kv.put, kv.del, kv.keys and node.info are there from the start.
  void register_service(std::string name, Service service, ServiceOptions options = {});

  // Serves on "host:port" (port 0 picks a free one) or "inproc://name"; returns the
  // bound address. May be called more than once.
  Result<std::string> listen(std::string_view address);

  // Client-server: runs `service` at `peer` with `args` (an array table).
  Result<Value> call(std::string_view peer, std::string_view service, Value args = Value::table());
  // Remote evaluation: runs the Lua chunk at `peer`; returns its return values as an
  // array table.
  Result<Value> eval(std::string_view peer, std::string_view source, Value args = Value::table(),
                     const EvalOptions& options = {});
  // Runs a service of this node directly (what `node.call` in Lua does).
  Result<Value> call_local(std::string_view service, const Value& args);

  // Stops accepting, gives requests in flight up to `grace` to finish, then ends the
  // rest with "node is shutting down" and closes every connection. Idempotent.
  void shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));
  bool running() const;

  NodeStats stats() const;

  struct Impl;  // internal

 private:
  std::shared_ptr<Impl> impl_;
  friend Impl& node_impl(Node&);
};

}  // namespace sojourn
