// bench_tls: what mutual TLS costs on loopback, side by side with plain TCP in one process:
//  1. a client-server call (kv.get) and a remote evaluation (`return 1 + 1`, trusted level)
//     on a connection already open: median and p99, TLS / plain;
//  2. a new connection and its first call: TCP connect (+ the TLS 1.3 handshake with Ed25519
//     certificates both ways) + one round trip. The difference of the medians is the
//     handshake's cost.
// The two transports alternate in rounds so that drift of a shared VM hits both alike;
// compare the ratios, not the figures.
#include "sojourn/transports/asio.hpp"  // <utility> before Asio, see there

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench/stats.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/identity.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/transports/link.hpp"

namespace sojourn::bench {
namespace {

using Clock = std::chrono::steady_clock;

double micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

struct Row {
  std::string workload;
  LatencySummary plain, tls;
};

void print_rows(const std::vector<Row>& rows) {
  std::printf("| %-40s | %12s | %10s | %12s | %10s | %12s | %9s |\n", "workload (sequential, one client)", "plain med us",
              "plain p99", "TLS med us", "TLS p99", "ratio median", "ratio p99");
  std::printf("|------------------------------------------|-------------:|-----------:|-------------:|-----------:|"
              "-------------:|----------:|\n");
  for (const auto& r : rows) {
    std::printf("| %-40s | %12.1f | %10.1f | %12.1f | %10.1f | %11.2fx | %8.2fx |\n", r.workload.c_str(), r.plain.median_us,
                r.plain.p99_us, r.tls.median_us, r.tls.p99_us, r.tls.median_us / r.plain.median_us,
                r.tls.p99_us / r.plain.p99_us);
  }
}

// Runs `sample(tls)` `count` times per transport, alternating in `rounds` blocks.
Row measure(const std::string& name, std::size_t count, std::size_t rounds, const std::function<double(bool tls)>& sample) {
  std::vector<double> plain, tls;
  for (std::size_t r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < count / rounds; ++i) plain.push_back(sample(false));
    for (std::size_t i = 0; i < count / rounds; ++i) tls.push_back(sample(true));
  }
  return Row{name, summarize(std::move(plain)), summarize(std::move(tls))};
}

// Replies to every request with an empty payload: the floor of a round trip.
class EmptyHandler : public RequestHandler {
 public:
  asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind, std::vector<std::uint8_t>, PeerIdentity) override {
    co_return std::vector<std::uint8_t>{};
  }
};

asio::awaitable<Result<Frame>> first_request(std::shared_ptr<Link> link) {
  std::vector<std::uint8_t> payload(16, 1);
  auto r = co_await link->request(FrameKind::call, std::move(payload), std::chrono::milliseconds(5000));
  link->close();
  co_return r;
}

int run(std::size_t requests, std::size_t connections, std::size_t rounds) {
  set_log_level(LogLevel::error);  // the plain nodes' warnings would interleave with the table
  std::string root = (std::filesystem::temp_directory_path() / "sojourn-bench-tls-XXXXXX").string();
  if (::mkdtemp(root.data()) == nullptr) return 1;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{root};
  if (!create_ca(root + "/ca", "bench CA") || !create_identity("server", root + "/ca", root + "/server") ||
      !create_identity("client", root + "/ca", root + "/client")) {
    std::fprintf(stderr, "bench_tls: cannot create the test identities\n");
    return 1;
  }

  auto options = [&](const std::string& name, const std::string& tls_dir) {
    NodeOptions o;
    o.name = name;
    o.tls.dir = tls_dir;
    o.peer_isolation = Isolation::trusted;  // the transport's cost, not the jail's
    return o;
  };
  Node plain_server(options("plain-server", "")), tls_server(options("tls-server", root + "/server"));
  Node plain_client(options("plain-client", "")), tls_client(options("tls-client", root + "/client"));
  auto plain_addr = plain_server.listen("127.0.0.1:0");
  auto tls_addr = tls_server.listen("127.0.0.1:0");
  if (!plain_addr || !tls_addr) {
    std::fprintf(stderr, "bench_tls: cannot listen\n");
    return 1;
  }
  for (Node* n : {&plain_server, &tls_server}) (void)n->call_local("kv.put", Value::array({"k", 1}));

  std::vector<Row> rows;
  auto timed = [](auto&& f) {
    auto t0 = Clock::now();
    bool ok = f();
    if (!ok) {
      std::fprintf(stderr, "bench_tls: a request failed\n");
      std::exit(1);
    }
    return micros(Clock::now() - t0);
  };
  // Warm-up: opens both links and lets the caches settle.
  for (int i = 0; i < 200; ++i) {
    (void)plain_client.call(*plain_addr, "kv.get", Value::array({"k"}));
    (void)tls_client.call(*tls_addr, "kv.get", Value::array({"k"}));
  }
  rows.push_back(measure("CS call kv.get (open connection)", requests, rounds, [&](bool tls) {
    return timed([&] { return (tls ? tls_client.call(*tls_addr, "kv.get", Value::array({"k"}))
                                   : plain_client.call(*plain_addr, "kv.get", Value::array({"k"}))).ok(); });
  }));
  rows.push_back(measure("REV return 1 + 1 (open connection)", requests, rounds, [&](bool tls) {
    return timed([&] { return (tls ? tls_client.eval(*tls_addr, "return 1 + 1") : plain_client.eval(*plain_addr, "return 1 + 1")).ok(); });
  }));

  // New connections on the transport itself: connect (+ handshake) + one empty round trip.
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{io.get_executor()};
  std::thread io_thread([&] { io.run(); });
  auto handler = std::make_shared<EmptyHandler>();
  TlsConfig server_tls{root + "/server", "", {}}, client_tls{root + "/client", "", {}};
  TransportOptions plain_options, tls_server_options, tls_client_options;
  tls_server_options.tls = *make_tls_context(server_tls);
  tls_client_options.tls = *make_tls_context(client_tls);
  auto on_io = [&](auto f) {
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto fut = task->get_future();
    asio::post(io, [task] { (*task)(); });
    return fut.get();
  };
  auto [raw_plain, raw_tls] = on_io([&] {
    auto p = std::make_unique<TcpServer>(io.get_executor(), handler, plain_options);
    auto t = std::make_unique<TcpServer>(io.get_executor(), handler, tls_server_options);
    return std::make_pair(std::move(p), std::move(t));
  });
  auto plain_bound = on_io([&] { return raw_plain->listen(*parse_address("127.0.0.1:0")); });
  auto tls_bound = on_io([&] { return raw_tls->listen(*parse_address("127.0.0.1:0")); });
  rows.push_back(measure("new connection + first call", connections, rounds, [&](bool tls) {
    return timed([&] {
      auto link = make_link(io.get_executor(), tls ? *tls_bound : *plain_bound, tls ? tls_client_options : plain_options);
      return asio::co_spawn(io, first_request(link), asio::use_future).get().ok();
    });
  }));
  on_io([&] {
    raw_plain.reset();
    raw_tls.reset();
    return 0;
  });
  work.reset();
  io_thread.join();

  std::printf("bench_tls: loopback, one process; TLS 1.3, Ed25519 certificates both ways, no session resumption\n\n");
  print_rows(rows);
  const Row& fresh = rows.back();
  std::printf("\nhandshake cost (difference of the medians of a new connection): %.1f us\n",
              fresh.tls.median_us - fresh.plain.median_us);
  return 0;
}

}  // namespace
}  // namespace sojourn::bench

int main(int argc, char** argv) {
  std::size_t requests = 5000, connections = 1000, rounds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    std::size_t value = std::strtoull(argv[i + 1], nullptr, 10);
    if (flag == "--requests") requests = value;
    else if (flag == "--connections") connections = value;
    else if (flag == "--rounds") rounds = value;
    else {
      std::fprintf(stderr, "usage: bench_tls [--requests N (5000)] [--connections N (1000)] [--rounds N (5)]\n");
      return 2;
    }
  }
  if (requests < rounds || connections < rounds || rounds == 0) {
    std::fprintf(stderr, "bench_tls: --requests and --connections must be at least --rounds\n");
    return 2;
  }
  return sojourn::bench::run(requests, connections, rounds);
}
