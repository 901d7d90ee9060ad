// Internal: a node's client side: one multiplexed link per peer, made on first use, and the
// call and eval requests sent over them. On the network thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/transports/asio.hpp"
#include "sojourn/transports/link.hpp"

namespace sojourn {

class NodeRuntime;
class NodeTrust;

class PeerLinks {
 public:
  PeerLinks(const NodeOptions& options, NodeRuntime& runtime, const NodeTrust& trust);
  PeerLinks(const PeerLinks&) = delete;
  PeerLinks& operator=(const PeerLinks&) = delete;

  // What a request holds on to while it runs (the node it belongs to).
  void set_owner(std::weak_ptr<void> owner) { owner_ = std::move(owner); }

  // One request to `peer` and its decoded reply. Errors: shutting_down, the TLS context's
  // error, bad_address, the link's errors, remote_protocol_error for an unreadable reply.
  asio::awaitable<Result<Reply>> request_peer(const std::string& peer, FrameKind kind, std::vector<std::uint8_t> payload,
                                              std::chrono::milliseconds timeout);
  // A service at `peer`; its error reply becomes the Error.
  asio::awaitable<Result<Value>> call_peer(std::string peer, std::string service, Value args);
  // A remote evaluation at `peer`, signed when options.signing_key says.
  asio::awaitable<Result<EvalResult>> eval_peer(std::string peer, std::string source, Value args, EvalOptions options);

  // At shutdown: closes and forgets every link.
  void close_all();

 private:
  const NodeOptions& options_;
  NodeRuntime& runtime_;
  const NodeTrust& trust_;
  std::weak_ptr<void> owner_;
  std::unordered_map<std::string, std::shared_ptr<Link>> links_;
};

}  // namespace sojourn
