// The metrics module and its exposition format, the trace ring, and the node's --http side
// in-process: its endpoints, its read-only and malformed-request behaviour, its loopback rule.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <thread>

#include "agents/metrics.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/transports/address.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace sojourn::metrics;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Sends `request` to 127.0.0.1:port as it is and reads until the server closes.
std::string http_exchange(std::uint16_t port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
  std::string reply;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return reply;
}

std::string get(std::uint16_t port, const std::string& target) {
  return http_exchange(port, "GET " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
}

std::uint16_t port_of(const std::string& address) {
  auto a = parse_address(address);
  REQUIRE(a);
  return a->port;
}

}  // namespace

TEST_CASE("a counter family renders HELP, TYPE and one escaped series per label set") {
  CounterFamily c("demo_total", "Demo counter\nwith a newline", {"service", "outcome"});
  c.inc({"kv.get", "ok"});
  c.inc({"kv.get", "ok"}, 2);
  c.inc({"we\"ird\\", "no_such_service"});
  CHECK(c.value({"kv.get", "ok"}) == 3);
  CHECK(c.value({"absent", "ok"}) == 0);
  std::string out;
  c.render(out);
  CHECK(contains(out, "# HELP demo_total Demo counter\\nwith a newline\n"));
  CHECK(contains(out, "# TYPE demo_total counter\n"));
  CHECK(contains(out, "demo_total{service=\"kv.get\",outcome=\"ok\"} 3\n"));
  CHECK(contains(out, "demo_total{service=\"we\\\"ird\\\\\",outcome=\"no_such_service\"} 1\n"));
}

TEST_CASE("an unlabelled counter or gauge shows 0 before its first use") {
  CounterFamily c("plain_total", "h", {});
  GaugeFamily g("level", "h", {});
  std::string out;
  c.render(out);
  g.render(out);
  CHECK(contains(out, "\nplain_total 0\n"));
  CHECK(contains(out, "\nlevel 0\n"));
  g.set({}, 2.5);
  out.clear();
  g.render(out);
  CHECK(contains(out, "\nlevel 2.5\n"));
}

TEST_CASE("a histogram's buckets are cumulative, with +Inf, _sum and _count, and give quantiles") {
  HistogramFamily h("lat_seconds", "h", {"isolation"});
  using std::chrono::microseconds;
  h.observe({"trusted"}, microseconds(50));      // le 0.0001
  h.observe({"trusted"}, microseconds(700));     // le 0.001
  h.observe({"trusted"}, microseconds(700));
  h.observe({"trusted"}, std::chrono::seconds(20));  // above every bound
  h.observe({"process"}, microseconds(3000));    // le 0.005
  std::string out;
  h.render(out);
  CHECK(contains(out, "# TYPE lat_seconds histogram\n"));
  CHECK(contains(out, "lat_seconds_bucket{isolation=\"trusted\",le=\"0.0001\"} 1\n"));
  CHECK(contains(out, "lat_seconds_bucket{isolation=\"trusted\",le=\"0.0005\"} 1\n"));
  CHECK(contains(out, "lat_seconds_bucket{isolation=\"trusted\",le=\"0.001\"} 3\n"));
  CHECK(contains(out, "lat_seconds_bucket{isolation=\"trusted\",le=\"10\"} 3\n"));
  CHECK(contains(out, "lat_seconds_bucket{isolation=\"trusted\",le=\"+Inf\"} 4\n"));
  CHECK(contains(out, "lat_seconds_count{isolation=\"trusted\"} 4\n"));
  CHECK(contains(out, "lat_seconds_sum{isolation=\"trusted\"} 20.00145\n"));
  CHECK(contains(out, "lat_seconds_bucket{isolation=\"process\",le=\"0.0025\"} 0\n"));
  CHECK(contains(out, "lat_seconds_bucket{isolation=\"process\",le=\"0.005\"} 1\n"));
  CHECK(h.count() == 5);
  CHECK(h.quantile(0.5) == doctest::Approx(0.001));     // 3rd of 5
  CHECK(h.quantile(0.2) == doctest::Approx(0.0001));
  CHECK(std::isinf(h.quantile(1.0)));                   // the 20 s one is above the last bound
}

TEST_CASE("sample values are written as the exposition format reads them") {
  CHECK(format_value(3) == "3");
  CHECK(format_value(0.25) == "0.25");
  CHECK(format_value(0.0001) == "0.0001");
  CHECK(format_value(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(escape_label("a\nb\"c\\") == "a\\nb\\\"c\\\\");
}

TEST_CASE("the trace ring keeps the most recent events with growing sequence numbers") {
  TraceRing ring(3);
  CHECK(ring.last_seq() == 0);
  for (int i = 0; i < 5; ++i) ring.add("request", "", "peer", std::string(1, 'n').append(std::to_string(i)));
  CHECK(ring.last_seq() == 5);
  auto all = ring.since(0);
  REQUIRE(all.size() == 3);  // bounded: 1 and 2 are gone
  CHECK(all[0].seq == 3);
  CHECK(all[2].detail == "n4");
  auto after = ring.since(4);
  REQUIRE(after.size() == 1);
  CHECK(after[0].seq == 5);
  CHECK(ring.since(5).empty());
  CHECK(ring.since(0, 2).size() == 2);
}

TEST_CASE("the trace ring's reused slots hold each event's own fields, lap after lap") {
  TraceRing ring(4);
  // Long fields first, then short ones into the same slots: nothing of the old event stays.
  for (int i = 0; i < 4; ++i) ring.add("departure", std::string(40, 'a'), std::string(30, 'p'), std::string(50, 'd'));
  for (int i = 0; i < 10; ++i) ring.add("request", "", "127.0.0.1:5" + std::to_string(i), "kv.get");
  CHECK(ring.last_seq() == 14);
  auto all = ring.since(0);
  REQUIRE(all.size() == 4);
  for (std::size_t i = 0; i < all.size(); ++i) {
    CHECK(all[i].seq == 11 + i);
    CHECK(all[i].kind == "request");
    CHECK(all[i].agent.empty());
    CHECK(all[i].peer == "127.0.0.1:5" + std::to_string(6 + i));
    CHECK(all[i].detail == "kv.get");
    CHECK(all[i].unix_ms > 0);
  }
  CHECK(ring.since(12).size() == 2);
  CHECK(ring.since(12)[0].seq == 13);
  CHECK(ring.since(14).empty());
  CHECK(ring.since(1000).empty());
  CHECK(ring.since(0, 1).front().seq == 11);
}

namespace {
// One event at a fixed wall time (ms after an arbitrary start): equal events in one
// millisecond make a run, whatever the clock does while the test runs.
void add_ms(TraceRing& ring, int ms, std::string_view kind, std::string_view peer = "127.0.0.1:5000",
            std::string_view detail = "kv.get") {
  const std::chrono::system_clock::time_point wall{std::chrono::milliseconds(1'700'000'000'000LL + ms)};
  ring.add_at(wall, std::chrono::steady_clock::time_point{}, kind, "", peer, detail);
}
std::string kinds(const std::vector<Event>& events) {
  std::string out;
  for (const Event& e : events) out += e.kind + std::to_string(e.seq) + " ";
  return out;
}
}  // namespace

TEST_CASE("the trace ring gives each of a run of equal events with its own sequence number") {
  TraceRing ring(100);
  for (int i = 0; i < 5; ++i) add_ms(ring, 0, "A");
  add_ms(ring, 0, "B");
  for (int i = 0; i < 3; ++i) add_ms(ring, 0, "A");  // after B: a run of its own
  for (int i = 0; i < 2; ++i) add_ms(ring, 0, "C");
  CHECK(ring.last_seq() == 11);
  const auto all = ring.since(0);
  CHECK(kinds(all) == "A1 A2 A3 A4 A5 B6 A7 A8 A9 C10 C11 ");
  for (const Event& e : all) {
    CHECK(e.unix_ms == 1'700'000'000'000LL);
    CHECK(e.peer == "127.0.0.1:5000");
    CHECK(e.detail == "kv.get");
    CHECK(e.agent.empty());
  }
  CHECK(kinds(ring.since(3)) == "A4 A5 B6 A7 A8 A9 C10 C11 ");
  CHECK(kinds(ring.since(3, 3)) == "A4 A5 B6 ");
  CHECK(kinds(ring.since(7, 1)) == "A8 ");
  CHECK(kinds(ring.since(10)) == "C11 ");
  CHECK(ring.since(11).empty());
  CHECK(ring.since(0, 0).empty());
}

TEST_CASE("the trace ring starts a new run for any field that differs, or another millisecond") {
  TraceRing ring(100);
  add_ms(ring, 0, "request");
  add_ms(ring, 1, "request");                       // a later millisecond
  add_ms(ring, 1, "request", "127.0.0.1:5001");     // another peer
  add_ms(ring, 1, "request", "127.0.0.1:5001", "kv.put");  // another detail
  add_ms(ring, 1, "request", "127.0.0.1:5001", "kv.pu");   // a prefix of it
  add_ms(ring, 1, "eval", "127.0.0.1:5001", "kv.pu");      // another kind
  const auto all = ring.since(0);
  REQUIRE(all.size() == 6);
  CHECK(all[0].unix_ms + 1 == all[1].unix_ms);
  CHECK(all[1].peer == "127.0.0.1:5000");
  CHECK(all[2].peer == "127.0.0.1:5001");
  CHECK(all[2].detail == "kv.get");
  CHECK(all[3].detail == "kv.put");
  CHECK(all[4].detail == "kv.pu");
  CHECK(all[4].kind == "request");
  CHECK(all[5].kind == "eval");
  for (std::size_t i = 0; i < all.size(); ++i) CHECK(all[i].seq == i + 1);
}

TEST_CASE("a bounded trace ring gives only the last `capacity` events, runs or not") {
  SUBCASE("one run longer than the ring") {
    TraceRing ring(3);
    for (int i = 0; i < 10; ++i) add_ms(ring, 0, "A");
    CHECK(ring.last_seq() == 10);
    CHECK(kinds(ring.since(0)) == "A8 A9 A10 ");
    CHECK(kinds(ring.since(8)) == "A9 A10 ");
  }
  SUBCASE("the window starts inside a run") {
    TraceRing ring(3);
    for (int i = 0; i < 5; ++i) add_ms(ring, 0, "A");
    add_ms(ring, 0, "B");
    CHECK(kinds(ring.since(0)) == "A4 A5 B6 ");
    CHECK(kinds(ring.since(0, 2)) == "A4 A5 ");
  }
  SUBCASE("runs overwritten as the ring laps") {
    TraceRing ring(2);
    for (int i = 0; i < 3; ++i) add_ms(ring, 0, "A");
    add_ms(ring, 0, "B");
    for (int i = 0; i < 2; ++i) add_ms(ring, 0, "C");  // its slot was A's
    CHECK(kinds(ring.since(0)) == "C5 C6 ");
    add_ms(ring, 0, "D");  // B's slot
    CHECK(kinds(ring.since(0)) == "C6 D7 ");
    CHECK(kinds(ring.since(6)) == "D7 ");
    for (int i = 0; i < 6; ++i) add_ms(ring, 0, i % 2 == 0 ? "E" : "F");
    CHECK(kinds(ring.since(0)) == "E12 F13 ");
  }
}

TEST_CASE("with a trace file each event has its own line, equal or not") {
  const std::string path = std::filesystem::temp_directory_path() / ("sojourn_trace_runs_" + std::to_string(::getpid()) + ".jsonl");
  std::filesystem::remove(path);
  {
    TraceRing ring(8);
    REQUIRE(ring.open_file(path, "n").empty());
    for (int i = 0; i < 4; ++i) add_ms(ring, 0, "request");
    CHECK(kinds(ring.since(0)) == "request1 request2 request3 request4 ");
  }
  std::ifstream in(path);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    ++lines;
    CHECK(line.find("\"seq\":" + std::to_string(lines)) != std::string::npos);
  }
  CHECK(lines == 4);
  std::filesystem::remove(path);
}

TEST_CASE("a trace ring of no capacity keeps no event but still numbers them") {
  TraceRing ring(0);
  ring.add("request", "", "peer", "x");
  CHECK(ring.last_seq() == 1);
  CHECK(ring.since(0).empty());
}

TEST_CASE("a node's --http serves /metrics, the JSON API and the page; read-only; survives garbage") {
  NodeOptions options;
  options.name = "dash";
  options.peer_isolation = Isolation::trusted;
  options.http = "127.0.0.1:0";
  Node node(options);
  CHECK(node.http_address().empty());  // served from the first listen() on
  auto bound = node.listen("127.0.0.1:0");
  REQUIRE(bound);
  const std::string http = node.http_address();
  REQUIRE(!http.empty());
  const std::uint16_t port = port_of(http);
  CHECK(port != 0);

  auto r = node.eval(*bound, "return 6 * 7");
  REQUIRE(r);
  auto missing = node.call(*bound, "no.such", Value::table());
  CHECK_ERROR(missing, Errc::no_such_service, "no.such");

  const std::string metrics = get(port, "/metrics");
  CHECK(contains(metrics, "HTTP/1.1 200"));
  CHECK(contains(metrics, "text/plain; version=0.0.4"));
  CHECK(contains(metrics, "sojourn_requests_total{service=\"eval\",outcome=\"ok\"} 1\n"));
  CHECK(contains(metrics, "sojourn_requests_total{service=\"no.such\",outcome=\"no_such_service\"} 1\n"));
  CHECK(contains(metrics, "sojourn_errors_total{code=\"no_such_service\"} 1\n"));
  CHECK(contains(metrics, "sojourn_eval_seconds_count{isolation=\"trusted\"} 1\n"));
  CHECK(contains(metrics, "# TYPE sojourn_agents gauge\n"));
  CHECK(contains(metrics, "sojourn_agents{state=\"resident\"} 0\n"));
  CHECK(contains(metrics, "# TYPE sojourn_jail_warm_pool_hits_total counter\n"));

  const std::string api = get(port, "/api/node");
  CHECK(contains(api, "application/json"));
  CHECK(contains(api, "\"name\":\"dash\""));
  CHECK(contains(api, "\"evals_served\":1"));
  const std::string trace = get(port, "/api/trace?since=0");
  CHECK(contains(trace, "\"kind\":\"eval\""));
  CHECK(contains(trace, "\"kind\":\"error\""));
  CHECK(contains(get(port, "/api/trace?since=9999"), "\"events\":[]"));
  CHECK(contains(get(port, "/api/trace?since=x"), "HTTP/1.1 400"));
  CHECK(contains(get(port, "/api/agents"), "\"agents\":[]"));
  CHECK(contains(get(port, "/api/agents/0123"), "HTTP/1.1 404"));
  CHECK(contains(get(port, "/nothing"), "HTTP/1.1 404"));
  const std::string page = get(port, "/");
  CHECK(contains(page, "text/html"));
  CHECK(contains(page, "<svg id=\"map\""));
  CHECK(!contains(page, "http://cdn"));  // nothing loaded from elsewhere

  // Read-only: any other method is refused, and a body is not read.
  const std::string post = http_exchange(port, "POST /api/node HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  CHECK(contains(post, "HTTP/1.1 405"));
  CHECK(contains(post, "Allow: GET, HEAD"));
  const std::string head = http_exchange(port, "HEAD /api/node HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  CHECK(contains(head, "HTTP/1.1 200"));
  CHECK(!contains(head, "\"name\""));
  // Garbage and an oversized head close their own connection; the node keeps serving.
  CHECK(http_exchange(port, "\x16\x03\x01 not http at all\r\n\r\n").empty());
  CHECK(!contains(http_exchange(port, "GET /" + std::string(20000, 'a') + " HTTP/1.1\r\n\r\n"), "200 OK"));
  CHECK(contains(get(port, "/api/node"), "HTTP/1.1 200"));
  CHECK(contains(get(port, "/metrics"), "sojourn_http_requests_total{status=\"405\"} 1\n"));
  node.shutdown(std::chrono::milliseconds(500));
}

TEST_CASE("--http on a non-loopback address without TLS is refused unless insecure") {
  NodeOptions options;
  options.peer_isolation = Isolation::trusted;
  options.http = "0.0.0.0:0";
  Node node(options);
  auto bound = node.listen("127.0.0.1:0");
  CHECK_ERROR(bound, Errc::insecure_transport, "plain HTTP on 0.0.0.0:0");
  CHECK(node.http_address().empty());
  node.shutdown(std::chrono::milliseconds(100));

  options.insecure_plain_tcp = true;
  Node open(options);
  auto served = open.listen("127.0.0.1:0");
  REQUIRE(served);
  CHECK(!open.http_address().empty());
  open.shutdown(std::chrono::milliseconds(100));
}

TEST_CASE("the HTTP side keeps at most its cap of connections; one more is closed at accept") {
  NodeOptions options;
  options.peer_isolation = Isolation::trusted;
  options.http = "127.0.0.1:0";
  options.max_connections = 2;  // the HTTP side keeps min(64, this)
  Node node(options);
  REQUIRE(node.listen("127.0.0.1:0"));
  const std::uint16_t port = port_of(node.http_address());
  auto open_idle = [&] {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    return fd;
  };
  int first = open_idle();
  int second = open_idle();
  // Both are accepted and held open (a partial request head keeps them waiting).
  REQUIRE(::send(first, "GET / HTTP/1.1\r\n", 16, MSG_NOSIGNAL) == 16);
  REQUIRE(::send(second, "GET / HTTP/1.1\r\n", 16, MSG_NOSIGNAL) == 16);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(get(port, "/api/node").empty());  // the third: closed without an answer
  ::close(first);
  ::close(second);
  std::string answer;
  for (int i = 0; i < 50 && answer.empty(); ++i) {  // the server sees the closes on its thread
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    answer = get(port, "/api/node");
  }
  CHECK(contains(answer, "HTTP/1.1 200"));
  node.shutdown(std::chrono::milliseconds(100));
}

TEST_CASE("/metrics counts the process jail's warm guests: a run served without a fork is a warm-pool hit") {
  NodeOptions options;
  options.name = "warm";
  options.peer_isolation = Isolation::process;
  options.http = "127.0.0.1:0";
  Node node(options);
  auto bound = node.listen("127.0.0.1:0");
  REQUIRE(bound);
  const std::uint16_t port = port_of(node.http_address());
  CHECK(contains(get(port, "/metrics"), "sojourn_agent_image_bytes 0\n"));

  EvalOptions jailed;
  jailed.isolation = Isolation::process;
  for (int i = 0; i < 4; ++i) {
    auto r = node.eval(*bound, "return 6 * 7", Value::table(), jailed);
    REQUIRE(r);
    REQUIRE(r->isolation == Isolation::process);
  }
  const std::string metrics = get(port, "/metrics");
  CHECK(contains(metrics, "sojourn_jail_starts_total{isolation=\"process\"} 4\n"));
  // Four anonymous runs: later ones find a guest of the same principal back in the pool
  // (docs/jails.md, "Warm guests"); the first one too when the pool's background start of a
  // guest was done before it came. The count is the jail's own: never more than the runs.
  const std::string hits = "sojourn_jail_warm_pool_hits_total{isolation=\"process\"} ";
  const auto at = metrics.find(hits);
  REQUIRE(at != std::string::npos);
  const long reused = std::stol(metrics.substr(at + hits.size()));
  CHECK(reused >= 1);
  CHECK(reused <= 4);
  node.shutdown(std::chrono::milliseconds(100));
}

TEST_CASE("/metrics counts an agent's hops in and out and its steps at each level, hop after hop") {
  // The hop counters' and the step histogram's series are looked up once and then kept: a
  // tour A -> B -> A -> B must still count every hop and every step at B.
  NodeOptions a_options;
  a_options.name = "tour-a";
  a_options.peer_isolation = Isolation::trusted;
  Node a(a_options);
  auto a_addr = a.listen("127.0.0.1:0");
  REQUIRE(a_addr);
  NodeOptions b_options;
  b_options.name = "tour-b";
  b_options.peer_isolation = Isolation::trusted;
  b_options.http = "127.0.0.1:0";
  Node b(b_options);
  auto b_addr = b.listen("127.0.0.1:0");
  REQUIRE(b_addr);
  const std::uint16_t port = port_of(b.http_address());
  auto bundle = single_file_bundle("tour", R"(
local M = {}
function M.start(s) s.n = 0; agent.go(s.b, "hop") end
function M.hop(s)
  s.n = s.n + 1
  if s.n >= 3 then return s.n end
  if s.n % 2 == 1 then agent.go(s.a, "hop") else agent.go(s.b, "hop") end
end
return M)");
  REQUIRE(bundle);
  AgentLaunch launch;
  launch.bundle = *bundle;
  launch.state = Value::table();
  launch.state.set("a", *a_addr);
  launch.state.set("b", *b_addr);
  auto id = a.launch("", launch);
  REQUIRE(id);
  auto status = a.wait_agent("", *id, std::chrono::seconds(30));
  REQUIRE(status);
  REQUIRE(status->status == AgentState::finished);
  const std::string metrics = get(port, "/metrics");
  CHECK(contains(metrics, "sojourn_agent_hops_total{direction=\"in\"} 2\n"));
  CHECK(contains(metrics, "sojourn_agent_hops_total{direction=\"out\"} 1\n"));
  CHECK(contains(metrics, "sojourn_agent_step_seconds_count{isolation=\"trusted\"} 2\n"));
}
