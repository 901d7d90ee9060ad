// A node's client side: links to peers (one multiplexed connection each) and the call and
// eval requests sent over them (peer_links.hpp).
#include "agents/peer_links.hpp"  // first: brings <utility> before any Asio header

#include "agents/node_runtime.hpp"
#include "agents/node_trust.hpp"

namespace sojourn {

PeerLinks::PeerLinks(const NodeOptions& options, NodeRuntime& runtime, const NodeTrust& trust)
    : options_(options), runtime_(runtime), trust_(trust), direct_(options.max_payload, options.connect_timeout) {}

Result<std::shared_ptr<Link>> PeerLinks::link_for(const std::string& peer) {
  if (trust_.tls_error()) return *trust_.tls_error();
  // The peer asked last, as it was written: a client that calls one peer over and over
  // parses its address and looks its link up once, not on every request. Only a usable link
  // is taken from there; one that failed is replaced below as before.
  if (last_link_ && peer == last_peer_ && last_link_->usable()) return last_link_;
  auto address = parse_address(peer);
  if (!address) return address.error();
  std::string address_key = address->to_string();
  auto it = links_.find(address_key);
  if (it == links_.end() || !it->second->usable()) {
    TransportOptions transport;
    transport.tls = trust_.tls();
    transport.max_payload = options_.max_payload;
    transport.max_connections = options_.max_connections;
    transport.connect_timeout = options_.connect_timeout;
    if (!options_.links.empty()) transport.links = std::make_shared<const LinkModel>(options_.links);
    it = links_.insert_or_assign(address_key, make_link(runtime_.executor(), *address, transport)).first;
  }
  last_peer_ = peer;
  last_link_ = it->second;
  return it->second;
}

Result<Reply> PeerLinks::reply_from(Link& link, Result<Frame> frame) {
  if (!frame) return frame.error();
  auto reply = decode_reply(frame->payload);
  give_small_buffer(frame->payload);  // for this thread's next request
  if (!reply) {
    // A peer that sends an unreadable reply is not to be trusted with the connection.
    link.close();
    return errors::remote_protocol_error(link.peer().to_string(), reply.error().message);
  }
  return std::move(*reply);
}

asio::awaitable<Result<Reply>> PeerLinks::request_peer(const std::string& peer, FrameKind kind,
                                                       std::vector<std::uint8_t> payload,
                                                       std::chrono::milliseconds timeout, std::string expect_id) {
  auto keep = owner_.lock();
  if (runtime_.shutting_down() || !keep) co_return errors::shutting_down();
  Result<std::shared_ptr<Link>> found = link_for(peer);
  if (!found) co_return found.error();
  std::shared_ptr<Link> link = std::move(*found);
  if (trust_.tls() && !expect_id.empty()) {
    if (link->proven_id().empty()) {
      // Not connected yet: a ping makes the handshake happen before anything is sent.
      std::vector<std::uint8_t> none;
      auto pong = co_await link->request(FrameKind::ping, std::move(none), timeout);
      if (!pong) co_return pong.error();
    }
    if (link->proven_id() != expect_id) {
      co_return make_error(Errc::untrusted_peer, "untrusted peer " + link->peer().to_string() + ": it proved node id " +
                                                     link->proven_id().substr(0, 16) + ", not the expected " +
                                                     expect_id.substr(0, 16));
    }
  }
  Result<Frame> frame = co_await link->request(kind, std::move(payload), timeout);
  co_return reply_from(*link, std::move(frame));
}

// Temporaries inside a co_await expression are kept to plain locals here: g++ 12
// miscompiles some (aggregates, braced temporaries) across the suspension point.
asio::awaitable<Result<Value>> PeerLinks::call_peer(std::string peer, std::string service, Value args,
                                                    std::string expect_id, std::size_t args_bytes) {
  CallRequest request;
  request.service = std::move(service);
  request.args = std::move(args);
  std::vector<std::uint8_t> payload = args_bytes != 0 ? encode(request, args_bytes) : encode(request);
  if (trust_.tls() && !expect_id.empty()) {
    Result<Reply> reply =
        co_await request_peer(peer, FrameKind::call, std::move(payload), options_.request_timeout, std::move(expect_id));
    co_return call_result(std::move(reply));
  }
  // request_peer's path written out here, without the proof of an id: one coroutine
  // frame less for every call (a frame is an allocation and a resumption). Each branch
  // has its own result: no placeholder error (a string made and freed per call).
  auto keep = owner_.lock();
  if (runtime_.shutting_down() || !keep) co_return errors::shutting_down();
  Result<std::shared_ptr<Link>> found = link_for(peer);
  if (!found) co_return found.error();
  std::shared_ptr<Link> link = std::move(*found);
  Result<Frame> frame = co_await link->request(FrameKind::call, std::move(payload), options_.request_timeout);
  if (!frame) co_return frame.error();
  // Decoded straight to the caller's result: no Reply in between (reply_from's checks).
  bool malformed = false;
  Result<Value> result = decode_call_reply(frame->payload, malformed);
  give_small_buffer(frame->payload);  // for this thread's next request
  if (malformed) {
    // A peer that sends an unreadable reply is not to be trusted with the connection.
    link->close();
    co_return errors::remote_protocol_error(link->peer().to_string(), result.error().message);
  }
  co_return result;
}

Result<Value> PeerLinks::call_result(Result<Reply> reply) {
  if (!reply) return reply.error();
  if (reply->code != Errc::ok) return Error{reply->code, std::move(reply->message)};
  return std::move(reply->result);
}

asio::awaitable<Result<EvalResult>> PeerLinks::eval_peer(std::string peer, std::string source, Value args,
                                                         EvalOptions eo) {
  EvalRequest request;
  request.source = std::move(source);
  request.chunk_name = eo.chunk_name;
  request.args = std::move(args);
  request.limits = eo.limits;
  request.isolation = eo.isolation;
  std::string destination;
  if (eo.signing_key) {
    // The destination's id, signed with the rest: refused at any other node.
    Result<std::string> id = co_await peer_id(peer);
    if (!id) co_return id.error();
    destination = std::move(*id);
    request.destination = destination_for(destination);
    sign_eval(request, *eo.signing_key, eo.signature_lifetime);
  }
  std::chrono::milliseconds timeout = eo.timeout.count() > 0 ? eo.timeout : options_.request_timeout;
  std::vector<std::uint8_t> payload = encode(request);
  Result<Reply> reply = co_await request_peer(peer, FrameKind::eval, std::move(payload), timeout, std::move(destination));
  if (!reply) co_return reply.error();
  if (reply->code != Errc::ok) co_return Error{reply->code, std::move(reply->message)};
  EvalResult out;
  out.results = std::move(reply->result);
  out.isolation = reply->isolation;
  co_return out;
}

std::string PeerLinks::proven_id(const std::string& peer) const {
  auto address = parse_address(peer);
  if (!address) return {};
  auto it = links_.find(address->to_string());
  return it == links_.end() ? std::string() : it->second->proven_id();
}

asio::awaitable<Result<std::string>> PeerLinks::peer_id(std::string peer) {
  auto address = parse_address(peer);
  if (!address) co_return address.error();
  const std::string key = address->to_string();
  auto link = links_.find(key);
  auto known = ids_.find(key);
  if (link != links_.end() && known != ids_.end() && known->second.first.lock() == link->second && link->second->usable()) {
    co_return known->second.second;
  }
  Value none = Value::table();
  Result<Value> info = co_await call_peer(peer, "node.info", std::move(none));
  if (!info) co_return info.error();
  Value id = info->get("id");
  if (!id.is_string() || id.as_string().empty()) {
    co_return errors::remote_protocol_error(key, "its node.info names no node id");
  }
  std::string out = id.as_string();
  link = links_.find(key);
  if (link == links_.end()) co_return errors::connection_closed(key, "closed while asking for its node id");
  if (trust_.tls() && link->second->proven_id() != out) {
    // What it says must be what it proved: a node cannot claim another's id.
    co_return make_error(Errc::untrusted_peer, "untrusted peer " + key + ": its node.info names node id " +
                                                   out.substr(0, 16) + ", its TLS handshake proved " +
                                                   link->second->proven_id().substr(0, 16));
  }
  ids_.insert_or_assign(key, std::make_pair(std::weak_ptr<Link>(link->second), out));
  co_return out;
}

void PeerLinks::close_all() {
  for (auto& [peer, link] : links_) link->close();
  links_.clear();
  last_link_.reset();
  last_peer_.clear();
  ids_.clear();
  direct_.close_all();
}

}  // namespace sojourn
