// `sojourn top` (top_command.hpp): polls the node's JSON API over HTTP (or HTTPS with the
// --tls identity) and prints the node, its rates and latencies, its agents and recent events.
#include "transports/asio_full.hpp"  // first: <utility> before any Asio header

#include "agents/cli/top_command.hpp"

#include <chrono>
#include <cstdio>
#include <optional>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>

#include "sojourn/agents/node.hpp"
#include "sojourn/transports/address.hpp"
#include "transports/tls_context.hpp"

namespace sojourn::cli {

namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

class HttpClient {
 public:
  HttpClient(Address where, std::shared_ptr<const TlsContext> tls) : where_(std::move(where)), tls_(std::move(tls)) {}

  // One GET on a fresh connection (top asks a few times a second at most).
  Result<std::string> get(const std::string& target) {
    try {
      asio::io_context io;
      tcp::resolver resolver(io);
      auto endpoints = resolver.resolve(where_.host, std::to_string(where_.port));
      http::request<http::empty_body> req{http::verb::get, target, 11};
      req.set(http::field::host, where_.to_string());
      req.set(http::field::user_agent, "sojourn-top");
      http::response<http::string_body> res;
      beast::flat_buffer buffer;
      beast::tcp_stream stream(io);
      stream.expires_after(std::chrono::seconds(5));
      stream.connect(endpoints);
      if (tls_) {
        beast::ssl_stream<beast::tcp_stream&> secure(stream, tls_->context());
        auto check = std::make_shared<transport_detail::PeerCheck>();
        secure.set_verify_callback([check, tls = tls_](bool preverified, asio::ssl::verify_context& vc) {
          return transport_detail::verify_peer(*tls, *check, preverified, vc.native_handle());
        });
        boost::system::error_code ec;
        secure.handshake(asio::ssl::stream_base::client, ec);
        if (ec) {
          return make_error(Errc::tls_handshake_failed, "TLS handshake with " + where_.to_string() + " failed: " +
                                                            (check->refusal.empty() ? ec.message() : check->refusal));
        }
        http::write(secure, req);
        http::read(secure, buffer, res);
      } else {
        http::write(stream, req);
        http::read(stream, buffer, res);
      }
      if (res.result_int() != 200) {
        return make_error(Errc::remote_protocol_error, "peer " + where_.to_string() + " reported a protocol error: HTTP " +
                                                           std::to_string(res.result_int()) + " for " + target);
      }
      return std::move(res.body());
    } catch (const boost::system::system_error& e) {
      // A node with --tls closes a plain HTTP connection at once: say what may be missing.
      const bool maybe_tls = !tls_ && e.code() == beast::http::error::end_of_stream;
      return make_error(Errc::connect_failed, "cannot connect to " + where_.to_string() + ": " + e.code().message() +
                                                  (maybe_tls ? " (a node with --tls serves HTTPS: use --tls DIR)" : ""));
    }
  }

 private:
  Address where_;
  std::shared_ptr<const TlsContext> tls_;
};

std::string seconds_text(double s) {
  char buf[32];
  if (s <= 0) return "-";
  if (s < 0.001) std::snprintf(buf, sizeof buf, "%.0fus", s * 1e6);
  else if (s < 1) std::snprintf(buf, sizeof buf, "%.1fms", s * 1e3);
  else std::snprintf(buf, sizeof buf, "%.2fs", s);
  return buf;
}

std::string route_text(const json& hops) {
  std::string text;
  for (const auto& h : hops) text += (text.empty() ? "" : " > ") + h.value("node", std::string());
  return text;
}

struct Sample {
  double uptime = 0;
  std::uint64_t requests = 0;
};

// The screen; `previous` (the sample before) gives rates, else they are averages since start.
std::string screen(const json& node, const json& agents, const json& trace, const std::optional<Sample>& previous,
                   Sample& now) {
  now.uptime = node.value("uptime_s", 0.0);
  now.requests = node.value("calls_served", std::uint64_t{0}) + node.value("evals_served", std::uint64_t{0});
  double rate = 0;
  if (previous && now.uptime > previous->uptime) {
    rate = static_cast<double>(now.requests - previous->requests) / (now.uptime - previous->uptime);
  } else if (now.uptime > 0) {
    rate = static_cast<double>(now.requests) / now.uptime;
  }
  char line[512];
  std::string out;
  std::snprintf(line, sizeof line, "sojourn top - node %s at %s, up %.0f s\n", node.value("name", std::string()).c_str(),
                node.value("address", std::string()).c_str(), now.uptime);
  out += line;
  std::snprintf(line, sizeof line, "requests %llu (%.1f/s), failed %llu, in flight %llu; hops in %llu, out %llu; bytes in %llu, out %llu\n",
                static_cast<unsigned long long>(now.requests), rate,
                static_cast<unsigned long long>(node.value("requests_failed", std::uint64_t{0})),
                static_cast<unsigned long long>(node.value("in_flight", std::uint64_t{0})),
                static_cast<unsigned long long>(node.value("hops_in", std::uint64_t{0})),
                static_cast<unsigned long long>(node.value("hops_out", std::uint64_t{0})),
                static_cast<unsigned long long>(node.value("bytes_in", std::uint64_t{0})),
                static_cast<unsigned long long>(node.value("bytes_out", std::uint64_t{0})));
  out += line;
  for (const char* which : {"eval_latency", "step_latency"}) {
    const json& l = node[which];
    std::snprintf(line, sizeof line, "%-5s latency p50 %s p99 %s (%llu)\n", which == std::string_view("eval_latency") ? "eval" : "step",
                  seconds_text(l.value("p50_s", 0.0)).c_str(), seconds_text(l.value("p99_s", 0.0)).c_str(),
                  static_cast<unsigned long long>(l.value("count", std::uint64_t{0})));
    out += line;
  }
  std::string peers;
  for (const auto& p : node["peers"]) peers += (peers.empty() ? "" : ", ") + p.get<std::string>();
  out += "peers: " + (peers.empty() ? std::string("(none known)") : peers) + "\n\n";
  std::snprintf(line, sizeof line, "%-32s %-9s %-21s %-21s %4s  %s\n", "AGENT", "STATUS", "WHERE", "HOME", "HOPS", "ROUTE");
  out += line;
  for (const auto& a : agents["agents"]) {
    std::snprintf(line, sizeof line, "%-32s %-9s %-21s %-21s %4llu  %s\n", a.value("id", std::string()).c_str(),
                  a.value("status", std::string()).c_str(), a.value("location", std::string()).c_str(),
                  a.value("home", std::string()).c_str(), static_cast<unsigned long long>(a.value("epoch", std::uint64_t{0})),
                  route_text(a["hops"]).c_str());
    out += line;
  }
  if (agents["agents"].empty()) out += "(no agents)\n";
  out += "\nrecent events:\n";
  const json& events = trace["events"];
  const std::size_t from = events.size() > 8 ? events.size() - 8 : 0;
  for (std::size_t i = from; i < events.size(); ++i) {
    const json& e = events[i];
    std::string agent = e.value("agent", std::string());
    std::snprintf(line, sizeof line, "  #%llu %-9s %-8s %s %s\n", static_cast<unsigned long long>(e.value("seq", std::uint64_t{0})),
                  e.value("kind", std::string()).c_str(), agent.substr(0, 8).c_str(), e.value("peer", std::string()).c_str(),
                  e.value("detail", std::string()).c_str());
    out += line;
  }
  return out;
}

}  // namespace

int run_top(const TopCommand& c) {
  auto where = parse_address(c.address);
  if (!where || where->kind != Address::Kind::tcp) {
    return fail(where ? errors::bad_address(c.address, "top needs the node's --http HOST:PORT") : where.error(), false);
  }
  std::shared_ptr<const TlsContext> tls;
  if (!c.tls.dir.empty()) {
    NodeOptions options;
    apply_tls(c.tls, options);
    auto made = make_tls_context(options.tls);
    if (!made) return fail(made.error(), false);
    tls = *made;
  }
  HttpClient client(*where, tls);
  std::optional<Sample> previous;
  for (;;) {
    auto node = client.get("/api/node");
    if (!node) return fail(node.error(), false);
    auto agents = client.get("/api/agents");
    if (!agents) return fail(agents.error(), false);
    auto trace = client.get("/api/trace?since=0");
    if (!trace) return fail(trace.error(), false);
    Sample now;
    std::string text;
    try {
      text = screen(json::parse(*node), json::parse(*agents), json::parse(*trace), previous, now);
    } catch (const json::exception& e) {
      return fail(make_error(Errc::invalid_json, std::string("invalid JSON: ") + e.what()), false);
    }
    if (c.once) {
      std::fputs(text.c_str(), stdout);
      return exit_ok;
    }
    // Home, clear the screen, draw: the view refreshes in place.
    std::fputs(("\x1b[H\x1b[2J" + text).c_str(), stdout);
    std::fflush(stdout);
    previous = now;
    std::this_thread::sleep_for(std::chrono::milliseconds(c.interval_ms));
  }
}

}  // namespace sojourn::cli
