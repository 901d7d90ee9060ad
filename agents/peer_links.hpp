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
#include "sojourn/transports/direct_link.hpp"
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
  // With TLS and a non-empty `expect_id`, the request is sent only to a server whose
  // handshake proved that id (untrusted_peer otherwise): a relay or a wrong address cannot
  // hand it to another node.
  asio::awaitable<Result<Reply>> request_peer(const std::string& peer, FrameKind kind, std::vector<std::uint8_t> payload,
                                              std::chrono::milliseconds timeout, std::string expect_id = {});
  // A service at `peer`; its error reply becomes the Error. `args_bytes`: the arguments'
  // encoded size when the caller has measured it (the call's buffer is then sized once).
  asio::awaitable<Result<Value>> call_peer(std::string peer, std::string service, Value args, std::string expect_id = {},
                                           std::size_t args_bytes = 0);
  // The node id `peer`'s TLS handshake proved on its current link (empty: plain TCP, or no
  // link yet).
  std::string proven_id(const std::string& peer) const;
  // The id of the node at `peer`: over TLS the one its handshake proves, else what its
  // node.info says. Learned once per link.
  asio::awaitable<Result<std::string>> peer_id(std::string peer);
  // A remote evaluation at `peer`, signed when options.signing_key says.
  asio::awaitable<Result<EvalResult>> eval_peer(std::string peer, std::string source, Value args, EvalOptions options);

  // At shutdown: closes and forgets every link.
  void close_all();

  // The blocking API's own connections (node_client.cpp), used from the calling threads.
  DirectLinks& direct() { return direct_; }

 private:
  // The link to `peer`, made on first use (or again when it failed). Errors: the TLS
  // context's error, bad_address.
  Result<std::shared_ptr<Link>> link_for(const std::string& peer);
  // A reply frame decoded; an unreadable one closes the link (remote_protocol_error).
  static Result<Reply> reply_from(Link& link, Result<Frame> frame);
  // A call's reply as its caller gets it: the result, or the error the peer answered.
  static Result<Value> call_result(Result<Reply> reply);

  const NodeOptions& options_;
  NodeRuntime& runtime_;
  const NodeTrust& trust_;
  std::weak_ptr<void> owner_;
  std::unordered_map<std::string, std::shared_ptr<Link>> links_;
  // The peer of the last request as its caller wrote it, and its link (request_peer).
  std::string last_peer_;
  std::shared_ptr<Link> last_link_;
  // peer -> (the link it was learned on, the id node.info gave)
  std::unordered_map<std::string, std::pair<std::weak_ptr<Link>, std::string>> ids_;
  DirectLinks direct_;
};

}  // namespace sojourn
