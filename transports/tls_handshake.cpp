// The TLS handshake of a framed connection: mutual authentication within a deadline, the
// peer's identity out of its certificate, a clear answer to a plain client, and a close
// after a refusal that lets the TLS alert reach the peer.
#include <algorithm>
#include <array>
#include <cstring>

#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "sojourn/core/identity.hpp"
#include "sojourn/core/messages.hpp"
#include "transports/framed_socket.hpp"
#include "transports/tls_context.hpp"

namespace sojourn::transport_detail {

namespace {

// The first byte of a TLS record that starts a handshake (a ClientHello).
constexpr std::uint8_t kTlsHandshakeRecord = 0x16;

}  // namespace

asio::awaitable<bool> FramedSocket::refuse_plain_client() {
  // A server looks at the first bytes before TLS does: a sojourn client without --tls
  // sends a frame, and deserves to hear why nothing will come back.
  boost::system::error_code ec;
  co_await lowest().async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return false;
  std::uint8_t first[4] = {};
  std::size_t n = lowest().receive(asio::buffer(first), tcp::socket::message_peek, ec);
  if (ec || n == 0 || first[0] == kTlsHandshakeRecord) co_return false;
  // The frame header is little-endian: the magic's low byte comes first ("SJRN").
  const std::uint8_t magic[4] = {static_cast<std::uint8_t>(kFrameMagic), static_cast<std::uint8_t>(kFrameMagic >> 8),
                                 static_cast<std::uint8_t>(kFrameMagic >> 16), static_cast<std::uint8_t>(kFrameMagic >> 24)};
  if (std::memcmp(first, magic, std::min<std::size_t>(n, 4)) != 0) co_return false;
  ProtocolError pe{Errc::insecure_transport,
                   "insecure transport: this node accepts only mutually authenticated TLS; connect with --tls DIR"};
  auto bytes = encode_frame(FrameKind::protocol_error, 0, encode(pe));
  co_await asio::async_write(lowest(), asio::buffer(bytes), asio::redirect_error(asio::use_awaitable, ec));
  co_return true;
}

asio::awaitable<Result<PeerIdentity>> FramedSocket::handshake(std::chrono::milliseconds timeout) {
  auto self = shared_from_this();
  PeerIdentity who;
  who.address = peer_name_;
  // The timer's handler may run after this frame is gone: it owns what it touches. `done`
  // stops a handler already queued when the handshake ended (cancel() cannot recall it) from
  // closing a connection that was just authenticated.
  struct Guard {
    bool timed_out = false;
    bool done = false;
  };
  auto state = std::make_shared<Guard>();
  bool* timed_out = &state->timed_out;
  asio::steady_timer guard(executor_, timeout);
  guard.async_wait([self, state](boost::system::error_code e) {
    if (e || state->done) return;
    state->timed_out = true;
    boost::system::error_code ignored;
    self->lowest().close(ignored);
  });
  if (server_side_) {
    bool plain = co_await refuse_plain_client();
    if (plain || *timed_out) {
      state->done = true;
      guard.cancel();
      const PeerCheck nothing_checked;
      const boost::system::error_code no_error;
      if (*timed_out) co_return handshake_error(peer_name_, nothing_checked, no_error, timeout);
      co_return make_error(Errc::tls_handshake_failed,
                           "TLS handshake with " + peer_name_ + " failed: it sent plain sojourn frames (a client without --tls)");
    }
  }
  auto check = std::make_shared<PeerCheck>();
  // A client holds the server to the identity configured for the address it dialled.
  if (!server_side_) check->expected = tls_context_->expected_at(peer_name_);
  tls_->set_verify_callback([check, tls = tls_context_](bool preverified, asio::ssl::verify_context& vc) {
    return verify_peer(*tls, *check, preverified, vc.native_handle());
  });
  boost::system::error_code ec;
  auto type = server_side_ ? asio::ssl::stream_base::server : asio::ssl::stream_base::client;
  co_await tls_->async_handshake(type, asio::redirect_error(asio::use_awaitable, ec));
  state->done = true;
  guard.cancel();
  if (ec || *timed_out) co_return handshake_error(peer_name_, *check, ec, *timed_out ? timeout : std::chrono::milliseconds(0));
  if (SSL_get0_peer_certificate(tls_->native_handle()) == nullptr) {
    co_return make_error(Errc::untrusted_peer, "untrusted peer " + peer_name_ + ": no certificate");
  }
  // verify_peer read the leaf's name and key already.
  who.name = std::move(check->name);
  who.fingerprint = std::move(check->fingerprint);
  co_return who;
}

void FramedSocket::close_after_refusal() {
  // The alert is written; stop sending and read what the peer still sends (its first
  // request, in TLS 1.3) until it closes, or a second passes.
  boost::system::error_code ignored;
  lowest().shutdown(tcp::socket::shutdown_send, ignored);
  asio::co_spawn(executor_, [self = shared_from_this()] { return self->drain_then_close(); },
                 [](std::exception_ptr e) { log_coroutine_exit("refused connection", e); });
}

asio::awaitable<void> FramedSocket::drain_then_close() {
  auto self = shared_from_this();
  frame_timer_.expires_after(std::chrono::seconds(1));
  frame_timer_.async_wait([self](boost::system::error_code ec) {
    if (!ec) self->close();
  });
  std::array<std::uint8_t, 4096> sink;
  boost::system::error_code ec;
  while (!ec) co_await lowest().async_read_some(asio::buffer(sink), asio::redirect_error(asio::use_awaitable, ec));
  frame_timer_.cancel();
  close();
}

}  // namespace sojourn::transport_detail
