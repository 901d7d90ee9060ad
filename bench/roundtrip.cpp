// bench_roundtrip: sojourn client-server calls and remote evaluations side by side
// with their Redis counterparts (GET, EVALSHA) on the same machine: sequential
// latency (median, p99) and throughput with a window of requests in flight on one
// connection. Prints a table; on a shared VM compare the ratios, not the figures.
#include <sched.h>
#include <sys/utsname.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/drivers.hpp"
#include "bench/stats.hpp"

namespace sojourn::bench {
namespace {

struct Options {
  std::string sojourn_peer;
  std::uint16_t redis_port = 0;
  std::size_t requests = 5000;              // latency samples per row and system
  std::size_t warmup = 500;                 // unmeasured requests before each latency row
  // Per throughput row and system. Large enough that both usually stop at the time
  // bound: with a count like 20000, pipelined Redis would be done in ~20 ms.
  std::size_t throughput_requests = 1'000'000;
  std::size_t in_flight = 64;
  double seconds = 3.0;                     // time bound of one system's share of a row
  std::size_t rounds = 5;                   // latency rows alternate the systems this often
  std::string csv;                          // also write the figures here (bench/run_peers.sh)
  std::string only;                         // "cs" or "rev": only those rows (a profile of one path)
};

constexpr const char* kUsage =
    "usage: bench_roundtrip --sojourn 127.0.0.1:PORT --redis PORT [--requests N] [--in-flight N]\n"
    "                       [--throughput-requests N] [--seconds S] [--warmup N] [--rounds N]\n"
    "  --sojourn 127.0.0.1:PORT a running `sojourn node`; --redis PORT a redis-server on 127.0.0.1\n"
    "  --requests N             latency samples per row and system (default 5000)\n"
    "  --in-flight N            requests outstanding in the throughput rows (default 64)\n"
    "  --throughput-requests N  requests per throughput row and system (default 1000000)\n"
    "  --seconds S              time bound of each system's share of a row (default 3)\n"
    "  --warmup N               unmeasured requests before each row (default 500)\n"
    "  --rounds N               latency blocks alternating the two systems (default 5)\n"
    "  --csv FILE               also write id,unit,sojourn,sojourn_p99,redis,redis_p99 rows there\n"
    "  --only cs|rev            measure only the client-server or only the remote-evaluation rows\n"
    "Writes key 'k' on both servers (sojourn kv.put k {x=1}; Redis SET k 1).\n"
    "Redis is reached at 127.0.0.1:PORT only.\n";

// A bad command line: reported with the usage text and exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::optional<Options> parse_options(int argc, char** argv) {
  Options o;
  auto number = [](const std::string& flag, const char* text, double lo, double hi) {
    char* end = nullptr;
    double v = std::strtod(text, &end);
    if (end == text || *end != '\0' || !(v >= lo && v <= hi)) {
      char range[64];
      std::snprintf(range, sizeof range, "[%g, %g]", lo, hi);
      throw UsageError(flag + " expects a number in " + range + ", got '" + text + "'");
    }
    return v;
  };
  auto count = [&number](const std::string& flag, const char* text, double lo, double hi) {
    double v = number(flag, text, lo, hi);
    if (v != static_cast<double>(static_cast<std::size_t>(v))) {
      throw UsageError(flag + " expects a whole number, got '" + text + "'");
    }
    return static_cast<std::size_t>(v);
  };
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") return std::nullopt;
    if (i + 1 >= argc) throw UsageError(flag + " expects a value (or unknown option)");
    const char* v = argv[++i];
    if (flag == "--sojourn") o.sojourn_peer = v;
    else if (flag == "--redis") o.redis_port = static_cast<std::uint16_t>(count(flag, v, 1, 65535));
    else if (flag == "--requests") o.requests = count(flag, v, 1, 1e7);
    else if (flag == "--in-flight") o.in_flight = count(flag, v, 1, 1000);
    else if (flag == "--throughput-requests") o.throughput_requests = count(flag, v, 2, 1e8);
    else if (flag == "--seconds") o.seconds = number(flag, v, 0.1, 600);
    else if (flag == "--warmup") o.warmup = count(flag, v, 0, 1e6);
    else if (flag == "--rounds") o.rounds = count(flag, v, 1, 1000);
    else if (flag == "--csv") o.csv = v;
    else if (flag == "--only") {
      o.only = v;
      if (o.only != "cs" && o.only != "rev") throw UsageError("--only expects cs or rev, got '" + o.only + "'");
    }
    else throw UsageError("unknown option " + flag);
  }
  if (o.sojourn_peer.empty() || o.redis_port == 0) throw UsageError("--sojourn and --redis are required");
  // A benchmark that floods its peer belongs on loopback, like the Redis side.
  if (o.sojourn_peer.rfind("127.0.0.1:", 0) != 0) throw UsageError("--sojourn must be 127.0.0.1:PORT");
  return o;
}

Clock::duration seconds_to_duration(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

struct LatencyRow {
  std::string workload;
  LatencySummary sojourn, redis;
  std::string error;  // set when the row could not be measured
};

// The error text of a row left out by --only.
constexpr const char* kSkipped = "not measured (--only)";

// Warms both up, then alternates blocks of the two so that a burst of noise from a
// neighbour on the VM hits both systems rather than one.
LatencyRow measure_latency(std::string workload, const LatencyBlock& sojourn, const LatencyBlock& redis,
                           const Options& o) {
  LatencyRow row{std::move(workload), {}, {}, {}};
  const auto bound = seconds_to_duration(o.seconds);
  try {
    sojourn(o.warmup, Clock::now() + bound);
    redis(o.warmup, Clock::now() + bound);
    std::vector<double> s, r;
    for (std::size_t i = 0; i < o.rounds; ++i) {
      std::size_t count = o.requests / o.rounds + (i < o.requests % o.rounds ? 1 : 0);
      auto more = sojourn(count, Clock::now() + bound / o.rounds);
      s.insert(s.end(), more.begin(), more.end());
      more = redis(count, Clock::now() + bound / o.rounds);
      r.insert(r.end(), more.begin(), more.end());
    }
    row.sojourn = summarize(std::move(s));
    row.redis = summarize(std::move(r));
  } catch (const std::exception& e) {
    row.error = e.what();
  }
  return row;
}

struct ThroughputRow {
  std::string workload;
  Throughput sojourn, redis;
  std::string error;
};

// Two alternating runs per system after a short warm-up; figures are totals over both.
ThroughputRow measure_throughput(std::string workload, Node& client, const SojournRequest& sreq, RespClient& redis,
                                 const RedisRequest& rreq, const Options& o) {
  ThroughputRow row{std::move(workload), {}, {}, {}};
  const auto bound = seconds_to_duration(o.seconds);
  try {
    std::size_t warm = std::min<std::size_t>(o.throughput_requests / 10 + 1, 2000);
    sojourn_window(client, sreq, warm, o.in_flight, bound);
    redis_window(redis, rreq, warm, o.in_flight, bound);
    for (int round = 0; round < 2; ++round) {
      Throughput s = sojourn_window(client, sreq, o.throughput_requests / 2, o.in_flight, bound / 2);
      Throughput r = redis_window(redis, rreq, o.throughput_requests / 2, o.in_flight, bound / 2);
      row.sojourn.completed += s.completed;
      row.sojourn.seconds += s.seconds;
      row.redis.completed += r.completed;
      row.redis.seconds += r.seconds;
    }
  } catch (const std::exception& e) {
    row.error = e.what();
  }
  return row;
}

std::string machine_line() {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  int nproc = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 0;
  utsname u{};
  std::string kernel = uname(&u) == 0 ? std::string(u.sysname) + " " + u.release : "unknown kernel";
  return "machine: nproc " + std::to_string(nproc) + ", " + kernel;
}

std::string redis_version(RespClient& redis) {
  RespReply info = redis.command({"INFO", "server"});
  auto at = info.text.find("redis_version:");
  if (at == std::string::npos) return "unknown";
  auto end = info.text.find_first_of("\r\n", at);
  return info.text.substr(at + 14, end - at - 14);
}

void print_latency(const std::vector<LatencyRow>& rows) {
  std::printf("| %-36s | %17s | %14s | %15s | %12s | %21s |\n", "workload (sequential, one client)",
              "sojourn median µs", "sojourn p99 µs", "redis median µs", "redis p99 µs", "ratio (sojourn/redis)");
  std::printf("|--------------------------------------|------------------:|---------------:|----------------:|"
              "-------------:|----------------------:|\n");
  for (const auto& r : rows) {
    if (!r.error.empty()) {
      std::printf("| %-36s | not measured: %s |\n", r.workload.c_str(), r.error.c_str());
      continue;
    }
    std::printf("| %-36s | %17.1f | %14.1f | %15.1f | %12.1f | %20.2fx |\n", r.workload.c_str(), r.sojourn.median_us,
                r.sojourn.p99_us, r.redis.median_us, r.redis.p99_us, r.sojourn.median_us / r.redis.median_us);
  }
}

void print_throughput(const std::vector<ThroughputRow>& rows, std::size_t in_flight) {
  std::string title = "workload (" + std::to_string(in_flight) + " in flight, one connection)";
  std::printf("| %-40s | %13s | %13s | %21s |\n", title.c_str(), "sojourn req/s", "redis req/s",
              "ratio (sojourn/redis)");
  std::printf("|------------------------------------------|--------------:|--------------:|----------------------:|\n");
  for (const auto& r : rows) {
    if (!r.error.empty()) {
      std::printf("| %-40s | not measured: %s |\n", r.workload.c_str(), r.error.c_str());
      continue;
    }
    std::printf("| %-40s | %13.0f | %13.0f | %20.2fx |\n", r.workload.c_str(), r.sojourn.per_second(),
                r.redis.per_second(), r.sojourn.per_second() / r.redis.per_second());
  }
}

// Sample counts and maxima: where outliers and time-bounded rows show.
void print_details(const std::vector<LatencyRow>& latency, const std::vector<ThroughputRow>& throughput) {
  std::printf("\ndetails:\n");
  for (const auto& r : latency) {
    if (!r.error.empty()) continue;
    std::printf("  %-36s sojourn n=%zu max=%.0f µs; redis n=%zu max=%.0f µs\n", r.workload.c_str(), r.sojourn.samples,
                r.sojourn.max_us, r.redis.samples, r.redis.max_us);
  }
  for (const auto& r : throughput) {
    if (!r.error.empty()) continue;
    std::printf("  %-36s sojourn %zu in %.2f s; redis %zu in %.2f s\n", r.workload.c_str(), r.sojourn.completed,
                r.sojourn.seconds, r.redis.completed, r.redis.seconds);
  }
}

// The figures as rows for scripts: latency rows in µs (median, p99), throughput in req/s.
void write_csv(const std::string& path, const std::vector<LatencyRow>& latency, const std::vector<ThroughputRow>& throughput) {
  static const char* const kLatencyIds[] = {"cs_blocking", "cs_coroutine", "rev_blocking", "rev_coroutine"};
  static const char* const kThroughputIds[] = {"cs_throughput", "rev_throughput"};
  std::FILE* out = std::fopen(path.c_str(), "w");
  if (out == nullptr) throw std::runtime_error("cannot write " + path);
  std::fprintf(out, "id,unit,sojourn,sojourn_p99,redis,redis_p99\n");
  for (std::size_t i = 0; i < latency.size() && i < std::size(kLatencyIds); ++i) {
    const LatencyRow& r = latency[i];
    if (!r.error.empty()) continue;
    std::fprintf(out, "%s,us,%.1f,%.1f,%.1f,%.1f\n", kLatencyIds[i], r.sojourn.median_us, r.sojourn.p99_us,
                 r.redis.median_us, r.redis.p99_us);
  }
  for (std::size_t i = 0; i < throughput.size() && i < std::size(kThroughputIds); ++i) {
    const ThroughputRow& r = throughput[i];
    if (!r.error.empty()) continue;
    std::fprintf(out, "%s,req/s,%.0f,,%.0f,\n", kThroughputIds[i], r.sojourn.per_second(), r.redis.per_second());
  }
  std::fclose(out);
}

int run(const Options& o) {
  RespClient redis(o.redis_port);
  if (auto r = redis.command({"SET", kKey, "1"}); r.type != RespReply::Type::simple) {
    throw std::runtime_error("redis: SET failed: " + describe(r));
  }
  RespReply loaded = redis.command({"SCRIPT", "LOAD", kRedisScript});
  if (loaded.type != RespReply::Type::bulk) throw std::runtime_error("redis: SCRIPT LOAD failed: " + describe(loaded));
  RedisRequest get{RedisRequest::Kind::get, {}};
  RedisRequest evalsha{RedisRequest::Kind::evalsha, loaded.text};

  Node client(NodeOptions{.name = "bench-client"});
  Value stored = Value::table();
  stored.set("x", 1);
  if (auto put = client.call(o.sojourn_peer, "kv.put", Value::array({kKey, stored})); !put) {
    throw std::runtime_error("sojourn: kv.put at " + o.sojourn_peer + " failed: " + put.error().message);
  }
  SojournRequest call{SojournRequest::Kind::call, o.sojourn_peer};
  SojournRequest eval{SojournRequest::Kind::eval, o.sojourn_peer};

  std::printf("sojourn round trips vs Redis %s\n", redis_version(redis).c_str());
  std::printf("%s; sojourn node %s, redis 127.0.0.1:%u, all on loopback\n", machine_line().c_str(),
              o.sojourn_peer.c_str(), o.redis_port);
  std::printf("note: absolute figures on a shared 2-core VM are noisy: compare ratios.\n");
  std::printf("latency: %zu sequential requests per system and row in %zu alternating blocks, after %zu warm-up\n\n",
              o.requests, o.rounds, o.warmup);
  std::fflush(stdout);

  // A row left out by --only keeps its place (the CSV's ids go by position) and is not written.
  const bool cs = o.only != "rev", rev = o.only != "cs";
  auto skipped = [](std::string workload) { return LatencyRow{std::move(workload), {}, {}, kSkipped}; };
  std::vector<LatencyRow> latency;
  latency.push_back(cs ? measure_latency("CS  kv.get / GET, blocking API", sojourn_blocking_block(client, call),
                                         redis_block(redis, get), o)
                       : skipped("CS  kv.get / GET, blocking API"));
  latency.push_back(cs ? measure_latency("CS  kv.get / GET, coroutine API", sojourn_coroutine_block(client, call),
                                         redis_block(redis, get), o)
                       : skipped("CS  kv.get / GET, coroutine API"));
  latency.push_back(rev ? measure_latency("REV eval / EVALSHA, blocking API", sojourn_blocking_block(client, eval),
                                          redis_block(redis, evalsha), o)
                        : skipped("REV eval / EVALSHA, blocking API"));
  latency.push_back(rev ? measure_latency("REV eval / EVALSHA, coroutine API", sojourn_coroutine_block(client, eval),
                                          redis_block(redis, evalsha), o)
                        : skipped("REV eval / EVALSHA, coroutine API"));
  print_latency(latency);
  std::printf("\n");

  std::vector<ThroughputRow> throughput;
  auto skipped_rate = [](std::string workload) {
    ThroughputRow row;
    row.workload = std::move(workload);
    row.error = kSkipped;
    return row;
  };
  throughput.push_back(cs ? measure_throughput("CS  kv.get / pipelined GET", client, call, redis, get, o)
                          : skipped_rate("CS  kv.get / pipelined GET"));
  throughput.push_back(rev ? measure_throughput("REV eval / pipelined EVALSHA", client, eval, redis, evalsha, o)
                           : skipped_rate("REV eval / pipelined EVALSHA"));
  print_throughput(throughput, o.in_flight);
  print_details(latency, throughput);
  if (!o.csv.empty()) write_csv(o.csv, latency, throughput);

  auto failed = [](const auto& row) { return !row.error.empty() && row.error != kSkipped; };
  bool any_failed = std::any_of(latency.begin(), latency.end(), failed) ||
                    std::any_of(throughput.begin(), throughput.end(), failed);
  return any_failed ? 1 : 0;
}

}  // namespace
}  // namespace sojourn::bench

int main(int argc, char** argv) {
  try {
    auto options = sojourn::bench::parse_options(argc, argv);
    if (!options) {
      std::fputs(sojourn::bench::kUsage, stdout);
      return 0;
    }
    return sojourn::bench::run(*options);
  } catch (const sojourn::bench::UsageError& e) {
    std::fprintf(stderr, "bench_roundtrip: %s\n%s", e.what(), sojourn::bench::kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_roundtrip: %s\n", e.what());
    return 1;
  }
}
