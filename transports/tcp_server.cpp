// The TCP server: accepts connections (TLS: authenticates each peer first) and runs each
// request of a connection concurrently, replying as each finishes (replies may overtake
// each other).
#include <set>

#include "sojourn/core/log.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/transports/link.hpp"
#include "transports/close_on_exec.hpp"
#include "transports/framed_socket.hpp"

namespace sojourn {

using namespace transport_detail;

namespace transport_detail {

class ServerSession;

}  // namespace transport_detail

struct TcpServer::Impl : std::enable_shared_from_this<TcpServer::Impl> {
  Impl(asio::any_io_executor ex, std::shared_ptr<RequestHandler> h, TransportOptions o)
      : executor(std::move(ex)),
        acceptor(executor),
        handler(std::move(h)),
        options(std::move(o)),
        budget(std::make_shared<ReadBudget>(options.max_partial_frame_bytes)) {}

  asio::awaitable<void> listener();
  // Closes a connection accepted past max_connections, saying why to a plain client.
  void refuse_at_cap(tcp::socket& socket, const std::string& peer);

  asio::any_io_executor executor;
  tcp::acceptor acceptor;
  std::shared_ptr<RequestHandler> handler;
  TransportOptions options;
  std::set<std::shared_ptr<ServerSession>> sessions;
  std::shared_ptr<ReadBudget> budget;  // shared by every connection's frame reads
  std::uint64_t refused_at_cap = 0;
  std::uint64_t refused_unlogged = 0;  // refusals since the last log line (one a second)
  std::chrono::steady_clock::time_point last_refusal_log{};
  bool accepting = false;
};

namespace transport_detail {

class ServerSession : public std::enable_shared_from_this<ServerSession> {
 public:
  ServerSession(std::shared_ptr<FramedSocket> socket, std::weak_ptr<TcpServer::Impl> server)
      : socket_(std::move(socket)), server_(std::move(server)), unblock_reader_(socket_->executor()) {
    unblock_reader_.expires_at(asio::steady_timer::time_point::max());
  }

  void start() {
    asio::co_spawn(socket_->executor(), [self = shared_from_this()] { return self->reader(); },
                   [](std::exception_ptr e) { log_coroutine_exit("session reader", e); });
  }

  void stop_reading() {
    stopping_ = true;
    socket_->shutdown_receive();
    unblock_reader_.cancel();
  }

  // Closes once the replies already queued are written.
  void close() { socket_->close_after_flush(); }

 private:
  asio::awaitable<void> reader() {
    auto server = server_.lock();
    if (!server) co_return;
    std::size_t max_in_flight = server->options.max_in_flight_per_connection;
    peer_.address = socket_->peer_name();
    if (server->options.tls) {
      // Nothing of a connection reaches the handler before its peer is authenticated.
      auto on_refused = server->options.on_refused;
      std::chrono::milliseconds timeout = server->options.frame_timeout;
      server.reset();
      auto who = co_await socket_->handshake(timeout);
      if (!who && stopping_) {  // the server stopped reading mid-handshake: not a refusal
        finish();
        co_return;
      }
      if (!who) {
        log_warn("server", "refused a TLS connection: " + who.error().message);
        if (on_refused) on_refused(peer_, who.error());
        refused_ = true;
        socket_->close_after_refusal();
        finish();
        co_return;
      }
      peer_ = std::move(*who);
      log_info("server", "TLS connection from " + peer_.to_string());
    }
    server.reset();
    // Replies made while working through the frames of one read leave in one write.
    socket_->batch_while_reading(true);
    while (!stopping_) {
      if (in_flight_ >= max_in_flight) {  // backpressure: stop reading until replies go out
        socket_->flush();
        boost::system::error_code ec;
        co_await unblock_reader_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      // A request the last read brought whole is served where it lies when the handler
      // answers it at once: no payload copy, no coroutine of read_frame().
      std::optional<Result<Frame>> next;
      if (socket_->buffered_bytes() == 0) {
        // Between frames: wait for bytes here, so that a whole request (a sequential
        // client's) is served in place below, without read_frame()'s coroutine and copy.
        boost::system::error_code ec;
        const std::size_t n = co_await socket_->read_more(ec);
        if (!socket_->took(n, ec)) next.emplace(socket_->ended_between_frames(ec));
      }
      if (next) {
        // the stream ended: handled below
      } else if (auto buffered = socket_->next_buffered()) {
        RequestHandler::ReplyFault fault;
        if (!*buffered) {
          next.emplace(buffered->error());
        } else if (is_request((*buffered)->header.kind)) {
          if (serve_now((*buffered)->header, (*buffered)->payload, fault)) continue;
          start_request(socket_->to_frame(**buffered), fault);
          continue;
        } else {
          next.emplace(socket_->to_frame(**buffered));
        }
      }
      if (!next) next.emplace(co_await socket_->read_frame());
      Result<Frame>& frame = *next;
      if (!frame) {
        if (is_protocol_error(frame.error().code)) {
          protocol_error(frame.error());
        } else {
          log_debug("server", socket_->peer_name() + ": " + frame.error().message);
        }
        break;
      }
      switch (frame->header.kind) {
        case FrameKind::ping:
          socket_->send(encode_frame(FrameKind::pong, frame->header.request_id, {}));
          break;
        case FrameKind::call:
        case FrameKind::eval: {
          RequestHandler::ReplyFault fault;
          if (serve_now(frame->header, frame->payload, fault)) break;
          start_request(std::move(*frame), fault);
          break;
        }
        default:
          protocol_error(make_error(Errc::bad_kind, "a client may not send frame kind " +
                                                        std::string(frame_kind_name(frame->header.kind))));
          break;
      }
    }
    finish();
  }

  // A request the handler answers at once (handle_now) is answered here, by the reader,
  // with no coroutine of its own; true if it was. Otherwise `fault` is what the test seam
  // asked for this request (looked at once, here).
  static bool is_request(FrameKind kind) { return kind == FrameKind::call || kind == FrameKind::eval; }

  bool serve_now(const FrameHeader& header, std::span<const std::uint8_t> payload, RequestHandler::ReplyFault& fault) {
    auto server = server_.lock();
    if (!server) return false;
    RequestHandler& handler = *server->handler;
    fault = handler.reply_fault(header.kind, payload);
    if (fault.drop || fault.delay.count() > 0) return false;
    auto reply = handler.handle_now(header.kind, payload, peer_);
    if (!reply) return false;
    server.reset();
    if (*reply) {
      socket_->send_frame(FrameKind::reply, header.request_id, std::move(**reply));
    } else {
      protocol_error(reply->error());
    }
    return true;
  }

  // A request the handler did not answer at once runs in a coroutine of its own.
  void start_request(Frame frame, RequestHandler::ReplyFault fault) {
    ++in_flight_;
    // The spawned function holds the session: the reader may end (the peer closed)
    // before the request starts, and run_request's `this` must outlive it.
    asio::co_spawn(socket_->executor(),
                   [self = shared_from_this(), f = std::move(frame), fault]() mutable {
                     return self->run_request(std::move(f), fault);
                   },
                   [](std::exception_ptr e) { log_coroutine_exit("request", e); });
  }

  asio::awaitable<void> run_request(Frame frame, RequestHandler::ReplyFault fault) {
    auto self = shared_from_this();
    Result<std::vector<std::uint8_t>> reply = errors::shutting_down();
    bool drop = false;
    std::chrono::milliseconds delay{0};
    if (auto server = server_.lock()) {
      auto handler = server->handler;
      drop = fault.drop;
      delay = fault.delay;
      server.reset();
      reply = co_await handler->handle(frame.header.kind, std::move(frame.payload), peer_);
    }
    if (delay.count() > 0) {
      asio::steady_timer hold(socket_->executor(), delay);
      boost::system::error_code ignored;
      co_await hold.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    if (drop) {
      log_warn("server", "fault injection: dropping the connection from " + socket_->peer_name() + " instead of replying");
      stopping_ = true;
      socket_->close();
    } else if (reply) {
      socket_->send_frame(FrameKind::reply, frame.header.request_id, std::move(*reply));
    } else {
      protocol_error(reply.error());
    }
    --in_flight_;
    unblock_reader_.cancel();
    if (done_reading_ && in_flight_ == 0) socket_->close_after_flush();
  }

  void protocol_error(const Error& e) {
    log_warn("server", "closing connection from " + socket_->peer_name() + ": " + e.message);
    socket_->send(encode_frame(FrameKind::protocol_error, 0, encode(ProtocolError{e.code, e.message})));
    stopping_ = true;
    socket_->close_after_flush();
  }

  void finish() {
    done_reading_ = true;
    socket_->flush();
    if (in_flight_ == 0 && !refused_) socket_->close_after_flush();
    if (auto server = server_.lock()) server->sessions.erase(shared_from_this());
  }

  std::shared_ptr<FramedSocket> socket_;
  std::weak_ptr<TcpServer::Impl> server_;
  asio::steady_timer unblock_reader_;
  PeerIdentity peer_;
  std::size_t in_flight_ = 0;
  bool refused_ = false;
  bool stopping_ = false;
  bool done_reading_ = false;
};

}  // namespace transport_detail

void TcpServer::Impl::refuse_at_cap(tcp::socket& socket, const std::string& peer) {
  ++refused_at_cap;
  ++refused_unlogged;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_refusal_log >= std::chrono::seconds(1)) {  // a flood of connections is one line a second
    log_warn("server", "refused " + std::to_string(refused_unlogged) + " connection(s) at accept (the last from " + peer +
                           "): " + std::to_string(sessions.size()) + " are open, the limit (--max-connections) is " +
                           std::to_string(options.max_connections));
    refused_unlogged = 0;
    last_refusal_log = now;
  }
  boost::system::error_code ignored;
  if (!options.tls) {
    // A plain client learns why; a TLS client only sees its handshake fail (nothing is
    // sent to a peer before it is authenticated). A write that would block is skipped.
    auto frame = encode_frame(FrameKind::protocol_error, 0,
                              encode(ProtocolError{Errc::overloaded, "node is overloaded: " +
                                                                         std::to_string(options.max_connections) +
                                                                         " connections are open, the most it keeps"}));
    socket.non_blocking(true, ignored);
    socket.write_some(asio::buffer(frame), ignored);
  }
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

asio::awaitable<void> TcpServer::Impl::listener() {
  auto self = shared_from_this();
  asio::steady_timer backoff(executor);
  while (accepting) {
    boost::system::error_code ec;
    tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (!accepting || ec == asio::error::operation_aborted) break;
      log_warn("server", "accept failed: " + ec.message());
      // Out of descriptors (EMFILE) fails again at once: a pause, not a busy loop.
      backoff.expires_after(std::chrono::milliseconds(50));
      co_await backoff.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    std::string peer = "?";
    boost::system::error_code ignored;
    auto remote = socket.remote_endpoint(ignored);
    transports::set_close_on_exec(socket.native_handle());
    if (!ignored) peer = remote.address().to_string() + ":" + std::to_string(remote.port());
    if (sessions.size() >= options.max_connections) {
      refuse_at_cap(socket, peer);
      continue;
    }
    std::shared_ptr<FramedSocket> framed;
    if (options.tls) {
      framed = std::make_shared<FramedSocket>(std::move(socket), options.tls, true, options.max_payload, options.frame_timeout, peer);
    } else {
      framed = std::make_shared<FramedSocket>(std::move(socket), options.max_payload, options.frame_timeout, peer);
    }
    framed->set_read_budget(budget);
    if (options.links && !ignored) {
      if (const LinkRule* rule = options.links->match(remote.address().to_string(), remote.port())) {
        framed->set_shaper(std::make_shared<LinkShaper>(rule->spec, link_seed(options.links->seed, "reply:" + peer), options.links->sent_bytes));
      }
    }
    auto session = std::make_shared<ServerSession>(framed, weak_from_this());
    sessions.insert(session);
    session->start();
  }
}

TcpServer::TcpServer(asio::any_io_executor executor, std::shared_ptr<RequestHandler> handler, TransportOptions options)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(handler), options)) {}

TcpServer::~TcpServer() {
  stop_accepting();
  close_all();
}

Result<Address> TcpServer::listen(const Address& where) {
  if (where.kind != Address::Kind::tcp) return errors::bad_address(where.to_string(), "not a TCP address");
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(where.host == "localhost" ? "127.0.0.1" : where.host, ec);
  if (ec) return errors::bad_address(where.to_string(), "listen needs an IP address");
  tcp::endpoint endpoint(ip, where.port);
  auto fail = [&](const char* step) {
    return make_error(Errc::bad_address, "cannot listen on " + where.to_string() + ": " + step + ": " + ec.message());
  };
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (ec) return fail("open");
  transports::set_close_on_exec(impl_->acceptor.native_handle());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  impl_->acceptor.bind(endpoint, ec);
  if (ec) return fail("bind");
  impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen");
  impl_->accepting = true;
  asio::co_spawn(impl_->executor, impl_->listener(), [](std::exception_ptr e) { log_coroutine_exit("listener", e); });
  Address bound = where;
  bound.port = impl_->acceptor.local_endpoint().port();
  return bound;
}

void TcpServer::stop_accepting() {
  if (!impl_->accepting) return;
  impl_->accepting = false;
  boost::system::error_code ignored;
  impl_->acceptor.close(ignored);
  for (const auto& s : std::set(impl_->sessions)) s->stop_reading();
}


ServerStats TcpServer::stats() const {
  ServerStats s;
  s.connections = impl_->sessions.size();
  s.refused_at_cap = impl_->refused_at_cap;
  s.partial_frame_bytes = impl_->budget->held();
  s.partial_frame_bytes_peak = impl_->budget->peak();
  return s;
}

void TcpServer::close_all() {
  for (const auto& s : std::set(impl_->sessions)) s->close();
  impl_->sessions.clear();
}

}  // namespace sojourn
