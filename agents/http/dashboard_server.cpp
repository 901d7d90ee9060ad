// The dashboard's HTTP server (http/dashboard.hpp): Boost.Beast on the node's network thread.
// Read-only and bounded: GET and HEAD only, an 8 KiB request head and no body, a timeout per
// request and for the TLS handshake, a cap on connections; a malformed request closes its
// connection and nothing else.
#include "transports/asio_full.hpp"  // first: <utility> before any Asio header

#include "agents/http/dashboard.hpp"

#include <set>

#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "agents/node_runtime.hpp"
#include "agents/node_stats.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/transports/address.hpp"
#include "transports/close_on_exec.hpp"
#include "transports/tls_context.hpp"

namespace sojourn {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr std::size_t kMaxRequestHead = 8192;
constexpr auto kRequestTimeout = std::chrono::seconds(10);
constexpr auto kHandshakeTimeout = std::chrono::seconds(5);

bool is_loopback_host(const std::string& host) {
  if (host == "localhost") return true;
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  return !ec && ip.is_loopback();
}

}  // namespace

struct DashboardServer::State {
  State(NodeRuntime& r, NodeCounters& c, HttpRouter route, std::size_t max)
      : runtime(r), counters(c), router(std::move(route)), acceptor(r.io()), max_connections(max) {}
  NodeRuntime& runtime;
  NodeCounters& counters;
  HttpRouter router;
  tcp::acceptor acceptor;
  std::shared_ptr<const TlsContext> tls;
  std::size_t max_connections;
  bool insecure = false;
  std::set<beast::tcp_stream*> open;  // network thread only
  bool stopped = false;
};

namespace {

using State = DashboardServer::State;

http::response<http::string_body> answer(State& st, const http::request<http::empty_body>& req) {
  http::response<http::string_body> res;
  res.version(req.version());
  res.set(http::field::server, "sojourn");
  res.set(http::field::cache_control, "no-store");
  res.set("X-Content-Type-Options", "nosniff");
  if (req.method() != http::verb::get && req.method() != http::verb::head) {
    res.result(http::status::method_not_allowed);
    res.set(http::field::allow, "GET, HEAD");
    res.set(http::field::content_type, "text/plain");
    res.body() = "read-only: GET and HEAD only\n";
  } else {
    HttpResponse r = st.router(std::string_view(req.target().data(), req.target().size()));
    res.result(static_cast<unsigned>(r.status));
    res.set(http::field::content_type, r.content_type);
    res.body() = std::move(r.body);
  }
  st.counters.metrics.http_requests.inc({std::to_string(res.result_int())});
  res.keep_alive(req.keep_alive());
  res.prepare_payload();
  if (req.method() == http::verb::head) res.body().clear();  // Content-Length stays the GET's
  return res;
}

template <class Stream>
asio::awaitable<void> serve_requests(std::shared_ptr<State> st, Stream& stream) {
  beast::flat_buffer buffer(kMaxRequestHead);
  for (;;) {
    http::request_parser<http::empty_body> parser;
    parser.header_limit(kMaxRequestHead);
    parser.body_limit(0);  // a request with a body is malformed here
    beast::get_lowest_layer(stream).expires_after(kRequestTimeout);
    boost::system::error_code ec;
    co_await http::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
    if (ec || st->stopped) co_return;  // closed, timed out or malformed: this connection only
    auto res = answer(*st, parser.get());
    const bool keep = res.keep_alive();
    co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
    if (ec || !keep) co_return;
  }
}

asio::awaitable<void> session(std::shared_ptr<State> st, tcp::socket socket) {
  beast::tcp_stream plain(std::move(socket));
  st->open.insert(&plain);
  struct Forget {
    State& st;
    beast::tcp_stream* s;
    ~Forget() { st.open.erase(s); }
  } forget{*st, &plain};
  if (!st->tls) {
    co_await serve_requests(st, plain);
    boost::system::error_code ignored;
    plain.socket().shutdown(tcp::socket::shutdown_both, ignored);
    co_return;
  }
  beast::ssl_stream<beast::tcp_stream&> secure(plain, st->tls->context());
  auto check = std::make_shared<transport_detail::PeerCheck>();
  secure.set_verify_callback([check, tls = st->tls](bool preverified, asio::ssl::verify_context& vc) {
    return transport_detail::verify_peer(*tls, *check, preverified, vc.native_handle());
  });
  plain.expires_after(kHandshakeTimeout);
  boost::system::error_code ec;
  co_await secure.async_handshake(asio::ssl::stream_base::server, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    st->counters.metrics.tls.inc({"http", "refused"});
    log_info("http", "dashboard: TLS handshake refused: " + (check->refusal.empty() ? ec.message() : check->refusal));
    co_return;
  }
  st->counters.metrics.tls.inc({"http", "ok"});
  co_await serve_requests(st, secure);
  plain.expires_after(kHandshakeTimeout);
  co_await secure.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> accept_loop(std::shared_ptr<State> st) {
  asio::steady_timer pause(st->runtime.io());
  for (;;) {
    boost::system::error_code ec;
    tcp::socket socket = co_await st->acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (st->stopped || !st->acceptor.is_open()) co_return;
    if (ec) {  // out of descriptors, say: wait a little rather than spin
      pause.expires_after(std::chrono::milliseconds(50));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    transports::set_close_on_exec(socket.native_handle());
    if (st->open.size() >= st->max_connections) {
      socket.close(ec);
      continue;
    }
    asio::co_spawn(st->runtime.io(), session(st, std::move(socket)), asio::detached);
  }
}

}  // namespace

DashboardServer::DashboardServer(NodeRuntime& runtime, NodeCounters& counters, const NodeOptions& options,
                                 HttpRouter router)
    : state_(std::make_shared<State>(runtime, counters, std::move(router), std::min<std::size_t>(options.max_connections, 64))) {
  state_->insecure = options.insecure_plain_tcp;
}

DashboardServer::~DashboardServer() = default;

Result<std::string> DashboardServer::listen(const Address& where, std::shared_ptr<const TlsContext> tls) {
  if (where.kind != Address::Kind::tcp) return errors::bad_address(where.to_string(), "--http needs HOST:PORT");
  if (!tls && !is_loopback_host(where.host) && !state_->insecure) {
    return make_error(Errc::insecure_transport, "insecure transport: refusing plain HTTP on " + where.to_string() +
                                                    ", which is not a loopback address: use --tls DIR (or --insecure)");
  }
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(where.host == "localhost" ? "127.0.0.1" : where.host, ec);
  if (ec) return errors::bad_address(where.to_string(), "--http needs an IP address");
  tcp::endpoint endpoint(ip, where.port);
  auto fail = [&](const char* step) {
    return make_error(Errc::bad_address, "cannot serve HTTP on " + where.to_string() + ": " + step + ": " + ec.message());
  };
  tcp::acceptor& acceptor = state_->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (ec) return fail("open");
  transports::set_close_on_exec(acceptor.native_handle());
  acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  acceptor.bind(endpoint, ec);
  if (ec) return fail("bind");
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen");
  state_->tls = std::move(tls);
  asio::co_spawn(state_->runtime.io(), accept_loop(state_), asio::detached);
  Address bound = where;
  bound.port = acceptor.local_endpoint().port();
  return bound.to_string();
}

void DashboardServer::stop() {
  state_->stopped = true;
  boost::system::error_code ec;
  state_->acceptor.close(ec);
  for (beast::tcp_stream* s : state_->open) s->close();
}

}  // namespace sojourn
