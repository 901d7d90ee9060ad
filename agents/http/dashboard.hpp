// Internal: the node's read-only HTTP side (`--http`, docs/observability.md): the dashboard
// page, /metrics and the JSON API. Routing (dashboard_api.cpp) knows the node, the server
// (dashboard_server.cpp, Boost.Beast) knows only sockets; Beast stays in that one file.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "sojourn/core/error.hpp"
#include "sojourn/transports/address.hpp"
#include "sojourn/transports/tls.hpp"

namespace sojourn {

class AgentRuntime;
class NodeJails;
class NodeRuntime;
struct NodeCounters;
struct NodeOptions;

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// Answers a GET of `target` (path and query).
using HttpRouter = std::function<HttpResponse(std::string_view target)>;

// What the routes read: the node's roles.
struct DashboardSources {
  const NodeOptions& options;
  NodeRuntime& runtime;
  NodeCounters& counters;
  AgentRuntime& agents;
  const NodeJails& jails;
};
// / (the page), /metrics, /api/node, /api/agents, /api/agents/ID, /api/trace?since=N; 404 otherwise.
HttpResponse route_dashboard(const DashboardSources& node, std::string_view target);

// The page served at / (dashboard_page.cpp): HTML, CSS and JS in one document, no external resource.
std::string_view dashboard_page();

class DashboardServer {
 public:
  DashboardServer(NodeRuntime& runtime, NodeCounters& counters, const NodeOptions& options, HttpRouter router);
  ~DashboardServer();
  DashboardServer(const DashboardServer&) = delete;
  DashboardServer& operator=(const DashboardServer&) = delete;

  // On the network thread: serves on `where` (HTTPS with a client certificate of the CA when
  // `tls` is set). Errors: bad_address, insecure_transport (plain HTTP on a non-loopback
  // address without NodeOptions::insecure_plain_tcp), the socket's.
  Result<std::string> listen(const Address& where, std::shared_ptr<const TlsContext> tls);
  // On the network thread, at shutdown: closes the listener and every connection.
  void stop();

  struct State;  // the listener and its connections (dashboard_server.cpp)

 private:
  std::shared_ptr<State> state_;
};

}  // namespace sojourn
