// Links between nodes. A Link is the client side of one connection to a peer, with
// many requests in flight at once (request ids, replies in any order). A
// RequestHandler is what a server hands each incoming request to.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/peer.hpp"
#include "sojourn/transports/address.hpp"
#include "sojourn/transports/asio.hpp"
#include "sojourn/transports/link_model.hpp"
#include "sojourn/transports/tls.hpp"

namespace sojourn {

struct TransportOptions {
  // Set: links and servers speak only mutually authenticated TLS (make_tls_context);
  // null: plain TCP. In-process links are unaffected.
  std::shared_ptr<const TlsContext> tls;
  // Called on the server's executor for each connection whose TLS handshake failed (the
  // peer untrusted, or refusing us); nothing of that connection reaches the handler.
  std::function<void(const PeerIdentity& peer, const Error& why)> on_refused;
  std::uint32_t max_payload = kDefaultMaxPayload;
  std::chrono::milliseconds connect_timeout{3000};
  // Once the first byte of a frame has arrived, the whole frame must within this;
  // otherwise the connection is closed as truncated. Idle time between frames is free.
  std::chrono::milliseconds frame_timeout{10'000};
  // Requests a server runs at once for one connection; past it, it stops reading.
  std::size_t max_in_flight_per_connection = 1024;
  // Connections a server keeps open at once (TLS handshakes in progress included); one
  // more is closed at accept (a plain client first hears "node is overloaded: ...").
  std::size_t max_connections = 1024;
  // Bytes a server holds, over all its connections, in request frames it is still reading
  // (a payload grows only as its bytes arrive, its capacity in powers of two; the first
  // 64 KiB of each frame are not counted). A connection whose bytes would pass it gets an
  // overloaded protocol error and is closed; the others go on.
  std::size_t max_partial_frame_bytes = 256u << 20;
  // Emulated links (experiments, link_model.hpp): frames this side sends to a destination a
  // rule matches are delayed and rate-limited; a client also pays the rule's set-up cost
  // before connecting. A server matches its replies by the client's address. Null: none.
  std::shared_ptr<const LinkModel> links;
};

class RequestHandler {
 public:
  virtual ~RequestHandler() = default;
  // Handles one call/eval request on the server's executor and returns the reply
  // payload. `peer` is who sent it: its address and, over TLS, the identity its
  // certificate proved. An Error means the request itself was malformed: the server sends
  // a protocol_error frame and closes that connection.
  virtual asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind kind, std::vector<std::uint8_t> payload,
                                                                    PeerIdentity peer) = 0;
  // The same answer as handle() for a request that can be served at once, without
  // waiting for anything (an in-memory read): the server's reader replies in place,
  // without a coroutine per request. nullopt: not such a request, handle() serves it.
  // Every server asks handle_now first, on the handler's executor, and calls handle() only
  // for what it declined (or for a request under a reply fault, below, which skips it).
  virtual std::optional<Result<std::vector<std::uint8_t>>> handle_now(FrameKind /*kind*/,
                                                                      std::span<const std::uint8_t> /*payload*/,
                                                                      const PeerIdentity& /*peer*/) {
    return std::nullopt;
  }

  // The testing seam of exactly-once protocols (for a node, agents/node_testing.hpp): what
  // a TCP server does with this request's reply instead of sending it at once. `drop`: it
  // runs the request but closes the connection instead of replying, as if it broke between
  // the work and its answer; `delay`: the reply is held back that long, so that later
  // messages overtake it. By default neither.
  struct ReplyFault {
    bool drop = false;
    std::chrono::milliseconds delay{0};
  };
  virtual ReplyFault reply_fault(FrameKind /*kind*/, std::span<const std::uint8_t> /*payload*/) { return {}; }
};

class Link {
 public:
  virtual ~Link() = default;
  // Sends one request and waits for its reply frame (kind reply). Errors:
  //   connect_failed, connection_closed, timeout, remote_protocol_error; over TLS also
  //   untrusted_peer, refused_by_peer, tls_handshake_failed.
  virtual asio::awaitable<Result<Frame>> request(FrameKind kind, std::vector<std::uint8_t> payload,
                                                 std::chrono::milliseconds timeout) = 0;
  // False once the connection failed or was closed; a new Link must be made.
  virtual bool usable() const = 0;
  virtual void close() = 0;
  virtual const Address& peer() const = 0;
  // Over TLS, once connected: the key fingerprint the server's handshake proved (the node's
  // id). Empty before that and on links that prove nothing (plain TCP, in-process).
  virtual std::string proven_id() const { return {}; }
  // Frames sent and received on this link (for tests and traces).
  virtual std::uint64_t frames_sent() const = 0;
};

// A Link to `peer`, connected lazily on the first request. Must be used from `executor`
// only (one thread).
std::shared_ptr<Link> make_link(asio::any_io_executor executor, const Address& peer, const TransportOptions& options);

// What a server holds now (for tests, stats and logs).
struct ServerStats {
  std::size_t connections = 0;              // open, handshakes included
  std::uint64_t refused_at_cap = 0;         // closed at accept: max_connections were open
  std::size_t partial_frame_bytes = 0;      // held in request frames still being read
  std::size_t partial_frame_bytes_peak = 0; // the most ever held at once
};

namespace transport_detail {
class ServerSession;
}  // namespace transport_detail

// Serves framed requests on TCP, or on TLS when the options say. Start and stop from the
// executor's thread.
class TcpServer {
 public:
  TcpServer(asio::any_io_executor executor, std::shared_ptr<RequestHandler> handler, TransportOptions options);
  ~TcpServer();
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  // Binds and starts accepting; returns the bound address (port 0 picks one).
  Result<Address> listen(const Address& where);
  // Stops accepting and stops reading new requests; requests already running go on.
  void stop_accepting();
  // Closes every connection at once.
  void close_all();
  // From the executor's thread.
  ServerStats stats() const;

 private:
  struct Impl;  // the library's own (tcp_server.cpp), shared with the connection sessions
  friend class transport_detail::ServerSession;
  std::shared_ptr<Impl> impl_;
};

// In-process serving: a node registers a handler under a name; links to
// "inproc://name" call it through the frame codec without sockets.
Result<void> register_inproc(const std::string& name, asio::any_io_executor executor,
                             std::shared_ptr<RequestHandler> handler);
void unregister_inproc(const std::string& name);

}  // namespace sojourn
