// bench_soak: many agents through one node over a long run, to show that its memory stays
// flat (issue 16: what a node remembers is pruned on the schedule of docs/migration.md, "What
// a node remembers"). Two nodes in this process at the trusted level: the subject S is the home
// of every agent; each goes S -> P -> S and ends there. S so keeps, per agent, an ended record
// (home), a COMMIT and a highest epoch (its arrival back) and a TRANSFER nonce, each until its
// retention passes. Every --sample-ms the bench prints the process's RSS, the heap in use and
// the sizes of S's tables; after the last agent it waits one retention and samples again, when
// every table must be empty.
//
//   bench_soak [--agents N] [--concurrency C] [--retention-ms R] [--sample-ms M] [--csv]
//              [--data-dir DIR [--durability full|normal]]
//
// --retention-ms sets S's and P's max_message_lifetime, transfer_lifetime,
// read_agent_retention and ended_agent_retention (the defaults are 300 s, 60 s, 60 s, 10 min:
// a run shows its plateau only once it is longer than them). Exit status: 0 when every agent
// finished and the tables drained, 1 otherwise, 2 for bad arguments.
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/log.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// VmRSS of this process in bytes (0 when /proc cannot say).
std::uint64_t rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

// Bytes malloc has handed out and not had back (all arenas, mmapped chunks included).
std::uint64_t heap_in_use() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

// SQLite's files in the data dir (database and WAL), 0 without one.
std::uint64_t store_bytes(const std::string& dir) {
  if (dir.empty()) return 0;
  std::uint64_t n = 0;
  for (const char* f : {"sojourn.db", "sojourn.db-wal"}) {
    std::error_code ec;
    auto size = std::filesystem::file_size(std::filesystem::path(dir) / f, ec);
    if (!ec) n += size;
  }
  return n;
}

double mib(std::uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

constexpr const char* kTraveller = R"(
local M = {}
function M.start(s) agent.go(s.peer, "back") end
function M.back(s) agent.go(s.home, "done") end
function M.done(s) return s.n end
return M)";

struct Sample {
  double t_s = 0;
  std::uint64_t done = 0;
  std::uint64_t rss = 0, heap = 0, store = 0;
  sojourn::NodeStats s, p;
};

struct Args {
  std::uint64_t agents = 100'000;
  unsigned concurrency = 16;
  std::chrono::milliseconds retention{10'000};
  std::chrono::milliseconds sample{2'000};
  bool csv = false;
  std::string data_dir;
  sojourn::Durability durability = sojourn::Durability::normal;
};

int usage() {
  std::fprintf(stderr,
               "usage: bench_soak [--agents N] [--concurrency C] [--retention-ms R] [--sample-ms M] [--csv]\n"
               "                  [--data-dir DIR [--durability full|normal]]\n");
  return 2;
}

void print_header(bool csv) {
  if (csv) {
    std::printf("t_s,agents_done,rss_kib,heap_kib,store_kib,resident,tracked,commits,epochs,nonces,"
                "peer_commits,peer_epochs,peer_nonces\n");
  } else {
    std::printf("%8s %10s %9s %9s %9s %8s %8s %8s %8s %8s %8s %8s %8s\n", "t_s", "done", "rss_mib", "heap_mib",
                "store_mib", "resident", "tracked", "commits", "epochs", "nonces", "p_commit", "p_epoch", "p_nonce");
  }
}

void print_sample(const Sample& x, bool csv) {
  if (csv) {
    std::printf("%.1f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu\n", x.t_s,
                static_cast<unsigned long long>(x.done), static_cast<unsigned long long>(x.rss / 1024),
                static_cast<unsigned long long>(x.heap / 1024), static_cast<unsigned long long>(x.store / 1024),
                static_cast<unsigned long long>(x.s.agents_resident), static_cast<unsigned long long>(x.s.agents_tracked),
                static_cast<unsigned long long>(x.s.commits_remembered),
                static_cast<unsigned long long>(x.s.epochs_remembered),
                static_cast<unsigned long long>(x.s.nonces_remembered),
                static_cast<unsigned long long>(x.p.commits_remembered),
                static_cast<unsigned long long>(x.p.epochs_remembered),
                static_cast<unsigned long long>(x.p.nonces_remembered));
  } else {
    std::printf("%8.1f %10llu %9.1f %9.1f %9.1f %8llu %8llu %8llu %8llu %8llu %8llu %8llu %8llu\n", x.t_s,
                static_cast<unsigned long long>(x.done), mib(x.rss), mib(x.heap), mib(x.store),
                static_cast<unsigned long long>(x.s.agents_resident), static_cast<unsigned long long>(x.s.agents_tracked),
                static_cast<unsigned long long>(x.s.commits_remembered),
                static_cast<unsigned long long>(x.s.epochs_remembered),
                static_cast<unsigned long long>(x.s.nonces_remembered),
                static_cast<unsigned long long>(x.p.commits_remembered),
                static_cast<unsigned long long>(x.p.epochs_remembered),
                static_cast<unsigned long long>(x.p.nonces_remembered));
  }
  std::fflush(stdout);
}

std::uint64_t tables_of(const sojourn::NodeStats& s) {
  return s.agents_resident + s.agents_tracked + s.commits_remembered + s.epochs_remembered + s.nonces_remembered;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sojourn;
  Args a;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--agents") == 0 && has_value) {
      a.agents = std::strtoull(argv[++i], nullptr, 10);
    } else if (std::strcmp(argv[i], "--concurrency") == 0 && has_value) {
      a.concurrency = static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10));
    } else if (std::strcmp(argv[i], "--retention-ms") == 0 && has_value) {
      a.retention = std::chrono::milliseconds(std::strtoll(argv[++i], nullptr, 10));
    } else if (std::strcmp(argv[i], "--sample-ms") == 0 && has_value) {
      a.sample = std::chrono::milliseconds(std::strtoll(argv[++i], nullptr, 10));
    } else if (std::strcmp(argv[i], "--csv") == 0) {
      a.csv = true;
    } else if (std::strcmp(argv[i], "--data-dir") == 0 && has_value) {
      a.data_dir = argv[++i];
    } else if (std::strcmp(argv[i], "--durability") == 0 && has_value) {
      const std::string d = argv[++i];
      if (d != "full" && d != "normal") return usage();
      a.durability = d == "full" ? Durability::full : Durability::normal;
    } else {
      return usage();
    }
  }
  if (a.agents == 0 || a.concurrency == 0 || a.retention.count() < 100 || a.sample.count() < 10) {
    std::fprintf(stderr, "--agents and --concurrency must be at least 1, --retention-ms 100, --sample-ms 10\n");
    return 2;
  }
  set_log_level(LogLevel::error);

  auto options_for = [&](const char* name) {
    NodeOptions o;
    o.name = name;
    o.peer_isolation = Isolation::trusted;  // what is measured is the node's own tables, not a jail
    o.max_message_lifetime = a.retention;
    o.transfer_lifetime = a.retention;
    o.read_agent_retention = a.retention;
    o.ended_agent_retention = a.retention;
    o.prune_interval = std::max(a.retention / 4, std::chrono::milliseconds(100));
    return o;
  };
  NodeOptions so = options_for("soak-s");
  so.data_dir = a.data_dir;
  so.durability = a.durability;
  Node s(so);
  Node p(options_for("soak-p"));
  auto s_addr = s.listen("127.0.0.1:0");
  auto p_addr = p.listen("127.0.0.1:0");
  if (!s_addr || !p_addr) {
    std::fprintf(stderr, "listen: %s\n", (!s_addr ? s_addr.error() : p_addr.error()).message.c_str());
    return 1;
  }
  auto bundle = single_file_bundle("traveller", kTraveller);
  if (!bundle) {
    std::fprintf(stderr, "bundle: %s\n", bundle.error().message.c_str());
    return 1;
  }

  std::atomic<std::uint64_t> next{0}, done{0}, failed{0};
  std::mutex error_mutex;
  std::string first_error;
  auto driver = [&] {
    while (true) {
      const std::uint64_t n = next.fetch_add(1);
      if (n >= a.agents) return;
      AgentLaunch l;
      l.bundle = *bundle;
      l.state = Value::table();
      l.state.set("peer", *p_addr);
      l.state.set("home", *s_addr);
      l.state.set("n", static_cast<std::int64_t>(n));
      auto id = s.launch("", std::move(l));
      Result<AgentStatus> st = id ? s.wait_agent("", *id, 60s) : Result<AgentStatus>(id.error());
      if (st && st->status == AgentState::finished && st->result.get(1).as_integer() == static_cast<std::int64_t>(n)) {
        done.fetch_add(1);
        continue;
      }
      failed.fetch_add(1);
      std::lock_guard lock(error_mutex);
      if (first_error.empty()) {
        first_error = "agent " + std::to_string(n) + ": " +
                      (!st ? st.error().message
                           : std::string(agent_state_name(st->status)) + (st->reason.empty() ? "" : " (" + st->reason + ")"));
      }
    }
  };

  const auto started = Clock::now();
  std::vector<Sample> samples;
  auto take_sample = [&] {
    Sample x;
    x.t_s = std::chrono::duration<double>(Clock::now() - started).count();
    x.done = done.load();
    x.rss = rss_bytes();
    x.heap = heap_in_use();
    x.store = store_bytes(a.data_dir);
    x.s = s.stats();
    x.p = p.stats();
    samples.push_back(x);
    print_sample(x, a.csv);
  };
  std::printf("# bench_soak: %llu agents S -> P -> S, %u at once, retention %lld ms, prune every %lld ms, %s\n",
              static_cast<unsigned long long>(a.agents), a.concurrency, static_cast<long long>(a.retention.count()),
              static_cast<long long>(so.prune_interval.count()),
              a.data_dir.empty() ? "in memory" : ("data dir " + a.data_dir).c_str());
  print_header(a.csv);
  take_sample();

  std::vector<std::thread> drivers;
  for (unsigned i = 0; i < a.concurrency; ++i) drivers.emplace_back(driver);
  while (done.load() + failed.load() < a.agents) {
    std::this_thread::sleep_for(a.sample);
    take_sample();
  }
  for (auto& t : drivers) t.join();
  const double run_s = std::chrono::duration<double>(Clock::now() - started).count();
  // One retention and two sweeps later every table must be empty.
  std::this_thread::sleep_for(a.retention + 2 * so.prune_interval + 200ms);
  take_sample();
  const Sample drained = samples.back();
  malloc_trim(0);
  const std::uint64_t trimmed = rss_bytes();

  // Flatness: the RSS at a quarter of the run (the tables have reached their plateau once the
  // run is longer than one retention) against the RSS at its end.
  const Sample* quarter = &samples.front();
  for (const auto& x : samples) {
    if (x.done * 4 >= a.agents) {
      quarter = &x;
      break;
    }
  }
  const Sample& last_running = samples[samples.size() - 2];
  std::uint64_t peak_s = 0;
  std::uint64_t peak_rss = 0;
  for (const auto& x : samples) {
    peak_s = std::max(peak_s, tables_of(x.s));
    peak_rss = std::max(peak_rss, x.rss);
  }
  const double growth = mib(last_running.rss) - mib(quarter->rss);
  const bool all_done = done.load() == a.agents;
  const bool tables_drained = tables_of(drained.s) == 0;
  std::printf("# agents finished %llu of %llu, failed %llu, in %.1f s (%.0f agents/s)\n",
              static_cast<unsigned long long>(done.load()), static_cast<unsigned long long>(a.agents),
              static_cast<unsigned long long>(failed.load()), run_s, static_cast<double>(done.load()) / run_s);
  if (!first_error.empty()) std::printf("# first failure: %s\n", first_error.c_str());
  std::printf("# RSS at 25%% of the agents %.1f MiB, at the end %.1f MiB (%+.1f MiB, %+.1f%%), peak %.1f MiB, "
              "after the drain and malloc_trim %.1f MiB\n",
              mib(quarter->rss), mib(last_running.rss), growth,
              quarter->rss ? 100.0 * growth / mib(quarter->rss) : 0.0, mib(peak_rss), mib(trimmed));
  std::printf("# S's tables (resident + tracked + commits + epochs + nonces): peak %llu entries, %llu after one "
              "retention with no agents: %s\n",
              static_cast<unsigned long long>(peak_s), static_cast<unsigned long long>(tables_of(drained.s)),
              tables_drained ? "drained" : "NOT drained");
  s.shutdown(1s);
  p.shutdown(1s);
  return all_done && tables_drained ? 0 : 1;
}
