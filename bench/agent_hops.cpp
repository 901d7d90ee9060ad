// bench_agent_hops: mobile-agent migration on loopback, three nodes in this process.
//  1. hop latency (median, p99) for agent state of 100 B, 4 KB and 1 MB, side by side with
//     a remote evaluation that carries the same state there and back, and with a bare TCP
//     echo of the same bytes (the floor any hop pays);
//  2. hops per second with many agents touring at once;
//  3. code-on-demand fetch, cold (the code crosses the wire) vs cached (only the hash).
// Each at the trusted level and in the process jail (a fresh jailed guest per step).
// On a shared VM compare the ratios, not the figures.
#include "sojourn/transports/asio.hpp"  // <utility> before Asio, and the asio namespace alias

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench/stats.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn::bench {
namespace {

using Clock = std::chrono::steady_clock;

double micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// Arrival marks: each step of the bench agent calls bench.mark, which stamps the time.
struct Marks {
  std::mutex mutex;
  std::vector<Clock::time_point> times;
};

constexpr const char* kBouncer = R"(
local M = {}
function M.start(s) return M.hop(s) end
function M.hop(s)
  node.call("bench.mark")
  s.left = s.left - 1
  if s.left < 0 then return true end
  -- Alternate between the two other stops.
  local a, b = s.stops[1], s.stops[2]
  s.stops[1], s.stops[2] = b, a
  agent.go(a, "hop")
end
return M)";

// The same tour with no host call: its steps may run on the network thread (docs/migration.md,
// "The step on the network thread"); marked by nothing, so timed as a whole tour.
constexpr const char* kQuietBouncer = R"(
local M = {}
function M.start(s) return M.hop(s) end
function M.hop(s)
  s.left = s.left - 1
  if s.left < 0 then return true end
  local a, b = s.stops[1], s.stops[2]
  s.stops[1], s.stops[2] = b, a
  agent.go(a, "hop")
end
return M)";

struct Cluster {
  std::vector<std::unique_ptr<Node>> nodes;
  std::vector<std::string> addr;
  Marks marks;
  // trace_prefix: each node appends its trace to PREFIX<i>.jsonl (--trace), to read a hop's
  // events in order (docs/experiments.md).
  // inline_steps false: NodeOptions::inline_eval_instructions 0 (no step, nor REV, is tried
  // on the network thread), the A/B of the inline step within one build.
  explicit Cluster(int n, Isolation level, const std::string& trace_prefix = {}, bool inline_steps = true) {
    for (int i = 0; i < n; ++i) {
      NodeOptions o;
      if (!inline_steps) o.inline_eval_instructions = 0;
      o.name = "bench" + std::to_string(i);
      if (!trace_prefix.empty()) o.trace = trace_prefix + std::to_string(i) + ".jsonl";
      o.peer_isolation = level;
      o.max_payload = 64u << 20;
      o.default_limits.memory_bytes = 256u << 20;
      nodes.push_back(std::make_unique<Node>(o));
      addr.push_back(*nodes.back()->listen("127.0.0.1:0"));
      nodes.back()->register_service("bench.mark", [this](const Value&) -> Result<Value> {
        std::lock_guard lock(marks.mutex);
        marks.times.push_back(Clock::now());
        return Value{};
      });
      nodes.back()->register_service("bench.echo", [](const Value& args) -> Result<Value> { return args.get(1); });
    }
  }
};

Value state_of(std::size_t bytes, int hops, const std::vector<std::string>& stops) {
  Value s = Value::table();
  s.set("left", hops);
  s.set("stops", Value::array({Value(stops[0]), Value(stops[1])}));
  s.set("payload", std::string(bytes, 'x'));
  return s;
}

// One tour of `hops` hops; the samples are the times between consecutive arrivals.
std::vector<double> tour_samples(Cluster& c, std::size_t bytes, int hops) {
  {
    std::lock_guard lock(c.marks.mutex);
    c.marks.times.clear();
  }
  auto bundle = single_file_bundle("bouncer", kBouncer);
  AgentLaunch l;
  l.bundle = *bundle;
  l.state = state_of(bytes, hops, {c.addr[1], c.addr[2]});
  l.max_hops = static_cast<std::uint32_t>(hops + 2);
  auto id = c.nodes[0]->launch("", l);
  if (!id) throw std::runtime_error(id.error().message);
  auto s = c.nodes[0]->wait_agent("", *id, std::chrono::minutes(5));
  if (!s || s->status != AgentState::finished) throw std::runtime_error(s ? s->reason : s.error().message);
  std::vector<double> samples;
  std::lock_guard lock(c.marks.mutex);
  for (std::size_t i = 2; i < c.marks.times.size(); ++i) samples.push_back(micros(c.marks.times[i] - c.marks.times[i - 1]));
  return samples;
}

// One tour of the quiet bouncer: its wall time from the launch to the end, per hop (the
// launch's step and the end's report spread over the tour).
double quiet_tour_us(Cluster& c, std::size_t bytes, int hops) {
  auto bundle = single_file_bundle("quiet", kQuietBouncer);
  AgentLaunch l;
  l.bundle = *bundle;
  l.state = state_of(bytes, hops, {c.addr[1], c.addr[2]});
  l.max_hops = static_cast<std::uint32_t>(hops + 2);
  const auto t0 = Clock::now();
  auto id = c.nodes[0]->launch("", l);
  if (!id) throw std::runtime_error(id.error().message);
  auto s = c.nodes[0]->wait_agent("", *id, std::chrono::minutes(5));
  if (!s || s->status != AgentState::finished) throw std::runtime_error(s ? s->reason : s.error().message);
  return micros(Clock::now() - t0) / hops;
}

// `warmup` hops of an untimed tour first: a node's first hops with a state of a new size are
// slower than the rest (with 1 MB, each thread that handles the state, a network thread and
// two workers per node, grows its malloc arena once: 4-19 ms per hop for about the first ten
// hops of three fresh nodes, 0.7-0.8 ms after), and which of them a short tour's median
// lands in made the figure bimodal. Erlang's side (bench/peers/hop.erl) warms up likewise.
LatencySummary hop_latency(Cluster& c, std::size_t bytes, int hops, int warmup = 0) {
  if (warmup > 0) (void)tour_samples(c, bytes, std::max(warmup, 3));
  return summarize(tour_samples(c, bytes, hops));
}

LatencySummary rev_latency(Cluster& c, std::size_t bytes, int n, int warmup = 0) {
  Value args = Value::array({state_of(bytes, 0, {c.addr[1], c.addr[2]})});
  std::vector<double> samples;
  for (int i = -warmup; i < n; ++i) {
    auto t0 = Clock::now();
    auto r = c.nodes[0]->eval(c.addr[1], "local s = ...; s.left = s.left - 1; return s", args);
    if (!r) throw std::runtime_error(r.error().message);
    if (i >= 0) samples.push_back(micros(Clock::now() - t0));
  }
  return summarize(samples);
}

// The same bytes one way over a fresh loopback TCP connection and back: what a hop costs at least.
LatencySummary tcp_echo_latency(std::size_t bytes, int n) {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  const auto port = acceptor.local_endpoint().port();
  std::thread server([&] {
    for (int i = 0; i < n; ++i) {
      asio::ip::tcp::socket s(io);
      acceptor.accept(s);
      std::vector<char> buf(bytes);
      asio::read(s, asio::buffer(buf));
      asio::write(s, asio::buffer(buf.data(), 1));
    }
  });
  std::vector<char> payload(bytes, 'x');
  std::vector<double> samples;
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    asio::ip::tcp::socket s(io);
    s.connect({asio::ip::make_address("127.0.0.1"), port});
    asio::write(s, asio::buffer(payload));
    char ack;
    asio::read(s, asio::buffer(&ack, 1));
    samples.push_back(micros(Clock::now() - t0));
  }
  server.join();
  return summarize(samples);
}

double hops_per_second(Cluster& c, int agents, int hops) {
  auto bundle = single_file_bundle("bouncer", kBouncer);
  std::vector<std::string> ids;
  auto t0 = Clock::now();
  for (int i = 0; i < agents; ++i) {
    AgentLaunch l;
    l.bundle = *bundle;
    l.state = state_of(100, hops, {c.addr[1], c.addr[2]});
    l.max_hops = static_cast<std::uint32_t>(hops + 2);
    auto id = c.nodes[0]->launch("", l);
    if (!id) throw std::runtime_error(id.error().message);
    ids.push_back(*id);
  }
  for (const auto& id : ids) {
    auto s = c.nodes[0]->wait_agent("", id, std::chrono::minutes(5));
    if (!s || s->status != AgentState::finished) throw std::runtime_error(s ? s->reason : s.error().message);
  }
  return static_cast<double>(agents) * (hops + 1) / std::chrono::duration<double>(Clock::now() - t0).count();
}

void fetch_latency(Cluster& c, int n, LatencySummary& cold, LatencySummary& cached) {
  std::string source = "return 1 -- " + std::string(16 * 1024, 'c');  // a 16 KB module
  (void)c.nodes[0]->publish("mod", source);
  std::vector<double> cold_us, cached_us;
  for (int i = 0; i < n; ++i) {
    Node fresh(NodeOptions{.name = "fetcher", .worker_threads = 1});
    auto t0 = Clock::now();
    auto m = fresh.fetch(c.addr[0], "mod");
    auto t1 = Clock::now();
    auto again = fresh.fetch(c.addr[0], "mod");
    auto t2 = Clock::now();
    if (!m || !again || !again->from_cache) throw std::runtime_error("fetch failed");
    cold_us.push_back(micros(t1 - t0));
    cached_us.push_back(micros(t2 - t1));
  }
  cold = summarize(cold_us);
  cached = summarize(cached_us);
}

void row(const char* what, const LatencySummary& s, const LatencySummary* peer) {
  if (peer == nullptr) {
    std::printf("  %-44s %10.0f %10.0f %8zu\n", what, s.median_us, s.p99_us, s.samples);
  } else {
    std::printf("  %-44s %10.0f %10.0f %8zu   x%.2f\n", what, s.median_us, s.p99_us, s.samples, s.median_us / peer->median_us);
  }
}

}  // namespace
}  // namespace sojourn::bench

int main(int argc, char** argv) {
  using namespace sojourn::bench;
  // bench_agent_hops [HOPS] [--csv FILE] [--latency-only] [--bytes N] [--hop-only trusted|process]
  //                  [--trace PREFIX] [--warmup W] [--quiet [--tour T]] [--no-inline]
  // HOPS: the tour's length (each agent's hops, one sample each; 1 MB rows a quarter of it,
  // at least 20). W: an untimed tour (and W untimed REVs) before each timed one, 20 by
  // default, 0 with --hop-only (its perf stat arithmetic counts every hop). N: one state size only, for
  // a profile. --hop-only: that level's agent tour and nothing else (no floor, no REV, no
  // throughput), so that `perf stat` over the run divided by HOPS is a hop's CPU time. HOPS is
  // at least 10, or 3 with --hop-only. --trace (with --hop-only): node i appends its trace to
  // PREFIXi.jsonl, the order of a hop's events (tracing costs time: not for figures).
  // --quiet (with --hop-only): the tour's agent makes no host call (no bench.mark), so its
  // steps may run on the network thread; tours of 100 hops, each timed from its launch
  // to its end, the figure the median tour's time per hop (its launch and end included);
  // --tour T: tours of T hops (T >= HOPS: one tour, for perf stat's arithmetic per hop).
  // --no-inline: the nodes try nothing on the network thread (inline_eval_instructions 0).
  int hops = 200;
  std::string csv, trace;
  bool latency_only = false;
  std::size_t only_bytes = 0;
  std::string hop_only;
  bool quiet = false, no_inline = false;
  int quiet_tour = 100;
  int warmup = -1;  // -1: the default (20 for the latency table, none with --hop-only)
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--csv" && i + 1 < argc) {
      csv = argv[++i];
    } else if (arg == "--bytes" && i + 1 < argc) {
      only_bytes = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--trace" && i + 1 < argc) {
      trace = argv[++i];
    } else if (arg == "--warmup" && i + 1 < argc) {
      warmup = std::max(0, std::atoi(argv[++i]));
    } else if (arg == "--quiet") {
      quiet = true;
    } else if (arg == "--tour" && i + 1 < argc) {
      quiet_tour = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--no-inline") {
      no_inline = true;
    } else if (arg == "--latency-only") {
      latency_only = true;
    } else if (arg == "--hop-only" && i + 1 < argc) {
      hop_only = argv[++i];
    } else {
      hops = std::atoi(argv[i]);
    }
  }
  // A latency table wants samples; a --hop-only run is divided by its hops (perf stat), so
  // its tour may be as short as asked, down to the 3 hops that give one sample.
  const int least = hop_only.empty() ? 10 : 3;
  if (hops < least) hops = least;
  if (warmup < 0) warmup = hop_only.empty() ? 20 : 0;
  std::FILE* out = csv.empty() ? nullptr : std::fopen(csv.c_str(), "w");
  if (out != nullptr) std::fprintf(out, "id,unit,median,p99\n");
  auto csv_row = [out](const std::string& id, const LatencySummary& s) {
    if (out != nullptr) std::fprintf(out, "%s,us,%.1f,%.1f\n", id.c_str(), s.median_us, s.p99_us);
  };
  sojourn::set_log_level(sojourn::LogLevel::error);
  if (!hop_only.empty()) {
    auto level = sojourn::parse_isolation(hop_only);
    if (!level) {
      std::fprintf(stderr, "%s\n", level.error().message.c_str());
      return 2;
    }
    Cluster c(3, *level, trace, !no_inline);
    const std::size_t bytes = only_bytes != 0 ? only_bytes : 4096;
    if (quiet) {
      // Tours of `tour` hops, each timed whole: the median tour resists a loaded machine's
      // stalls, which one long tour's mean takes in.
      const int tour = std::min(quiet_tour, hops);
      if (warmup > 0) (void)quiet_tour_us(c, bytes, std::max(warmup, 3));
      std::vector<double> tours;
      for (int done = 0; done < hops; done += tour) tours.push_back(quiet_tour_us(c, bytes, tour));
      const LatencySummary q = summarize(tours);
      std::printf("agent hop, %s, state %zu bytes, %zu quiet tours of %d hops%s: %.1f us per hop (median tour; p99 %.1f)\n",
                  hop_only.c_str(), bytes, tours.size(), tour, no_inline ? ", no inline step" : "", q.median_us, q.p99_us);
      return 0;
    }
    std::printf("agent hop, %s, state %zu bytes, a tour of %d hops (microseconds)\n", hop_only.c_str(), bytes, hops);
    std::printf("  %-44s %10s %10s %8s\n", "", "median", "p99", "samples");
    row("agent hop", hop_latency(c, bytes, hops, warmup), nullptr);
    return 0;
  }
  Cluster trusted(3, sojourn::Isolation::trusted);
  Cluster jailed(3, sojourn::Isolation::process);
  std::printf("agent hop latency on loopback, %d hops per size, 1 MB %d, each after %d untimed (microseconds; ratio = median / peer median)\n",
              hops, std::max(20, hops / 4), warmup);
  std::printf("  %-44s %10s %10s %8s   %s\n", "", "median", "p99", "samples", "ratio");
  for (std::size_t bytes : {std::size_t{100}, std::size_t{4096}, std::size_t{1} << 20}) {
    if (only_bytes != 0 && bytes != only_bytes) continue;
    // 1 MB rows take a quarter of the samples (at least 20), after the same warm-up.
    const int n = bytes >= (1u << 20) ? std::max(20, hops / 4) : hops;
    LatencySummary echo = tcp_echo_latency(bytes, n);
    LatencySummary rev = rev_latency(trusted, bytes, n, warmup);
    LatencySummary hop = hop_latency(trusted, bytes, n, warmup);
    LatencySummary rev_jailed = rev_latency(jailed, bytes, n, warmup);
    LatencySummary hop_jailed = hop_latency(jailed, bytes, n, warmup);
    std::printf(" state %zu bytes\n", bytes);
    row("tcp connect + send + ack (floor)", echo, nullptr);
    row("trusted: REV with the state, there and back", rev, &echo);
    row("trusted: agent hop (peer: REV)", hop, &rev);
    row("process jail: REV with the state", rev_jailed, &rev);
    row("process jail: agent hop (peer: jailed REV)", hop_jailed, &rev_jailed);
    const std::string size = bytes == 100 ? "100" : bytes == 4096 ? "4k" : "1m";
    csv_row("hop_trusted_" + size, hop);
    csv_row("hop_process_" + size, hop_jailed);
    csv_row("rev_trusted_" + size, rev);
    csv_row("rev_process_" + size, rev_jailed);
  }
  if (out != nullptr) std::fclose(out);
  if (latency_only) return 0;
  Cluster& c = trusted;
  const int agents = 50, tour = 20;
  std::printf("throughput: %d agents x %d hops at once: %.0f hops/s trusted, %.0f hops/s in the process jail\n", agents,
              tour, hops_per_second(c, agents, tour), hops_per_second(jailed, agents, tour));
  LatencySummary cold, cached;
  fetch_latency(c, std::max(20, hops / 4), cold, cached);
  std::printf("code-on-demand fetch of a 16 KB module (microseconds)\n");
  row("cold: code crosses the wire", cold, nullptr);
  row("cached: hash only (peer: cold)", cached, &cold);
  return 0;
}
