// What durability costs (issue 16, docs/reliability.md): kv.put round trips from a client
// node to a node that keeps its kv store in memory (no --data-dir), in SQLite with
// --durability normal, and with --durability full (the default: an fsync per write).
// Rounds alternate between the three so that a noisy machine skews them alike.
// Then agents launched at each of the three, whose one step makes W kv.put calls (W = 1 and
// --writes): a step's writes are committed with its outcome in one transaction, so at `full`
// an agent costs the same fsyncs whatever W is (docs/reliability.md, "Exactly-once steps").
//   bench_durability [--puts N] [--rounds R] [--agents A] [--writes W] [--dir DIR]
//   (DIR: where the data dirs go, default /var/tmp; on tmpfs an fsync costs nothing and
//   `full` measures nothing)
#include <stdlib.h>
#include <sys/vfs.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench/stats.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"

using namespace sojourn;

namespace {

struct Setup {
  const char* name;
  bool durable;
  Durability durability;
};

std::string fs_type(const std::string& dir) {
  struct statfs s {};
  if (::statfs(dir.c_str(), &s) != 0) return "unknown";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0xEF53: return "ext4";
    case 0x01021994: return "tmpfs";
    case 0x9123683E: return "btrfs";
    case 0x58465342: return "xfs";
    case 0x794c7630: return "overlayfs";
    default: return "other";
  }
}

}  // namespace

int main(int argc, char** argv) {
  int puts = 300, rounds = 5, agents = 40, writes = 16;
  std::string base = "/var/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--puts")) puts = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dir")) base = argv[i + 1];
    else if (!std::strcmp(argv[i], "--agents")) agents = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--writes")) writes = std::atoi(argv[i + 1]);
  }
  std::string pattern = base + "/sojourn-bench-durability-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "cannot make a directory under %s\n", base.c_str());
    return 1;
  }
  const std::string dir = pattern;
  const Setup setups[] = {{"memory", false, Durability::full}, {"normal", true, Durability::normal}, {"full", true, Durability::full}};
  std::vector<std::unique_ptr<Node>> servers;
  std::vector<std::string> addresses;
  for (const Setup& s : setups) {
    NodeOptions o;
    o.name = s.name;
    o.peer_isolation = Isolation::trusted;
    if (s.durable) o.data_dir = dir + "/" + s.name;
    o.durability = s.durability;
    auto node = std::make_unique<Node>(o);
    auto bound = node->listen("127.0.0.1:0");
    if (!bound) {
      std::fprintf(stderr, "%s: %s\n", s.name, bound.error().message.c_str());
      return 1;
    }
    addresses.push_back(*bound);
    servers.push_back(std::move(node));
  }
  NodeOptions co;
  co.name = "client";
  Node client(co);
  Value value = Value::table();
  value.set("payload", std::string(100, 'v'));
  value.set("n", 1);
  std::vector<std::vector<double>> samples(3);
  for (int round = 0; round < rounds; ++round) {
    for (std::size_t s = 0; s < 3; ++s) {
      for (int i = 0; i < puts; ++i) {
        const std::string key = "k" + std::to_string(i % 64);
        const auto t0 = std::chrono::steady_clock::now();
        auto r = client.call(addresses[s], "kv.put", Value::array({key, value}));
        const auto t1 = std::chrono::steady_clock::now();
        if (!r) {
          std::fprintf(stderr, "%s: kv.put: %s\n", setups[s].name, r.error().message.c_str());
          return 1;
        }
        samples[s].push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
    }
  }
  std::printf("kv.put round trips over loopback, %d rounds x %d puts, alternating; data dirs on %s (%s)\n", rounds, puts,
              dir.c_str(), fs_type(dir).c_str());
  std::printf("%-8s %10s %12s %10s %14s %12s\n", "store", "samples", "median_us", "p99_us", "median/memory", "p99/memory");
  const auto memory = bench::summarize(samples[0]);
  for (std::size_t s = 0; s < 3; ++s) {
    const auto sum = bench::summarize(samples[s]);
    std::printf("%-8s %10zu %12.1f %10.1f %14.2f %12.2f\n", setups[s].name, sum.samples, sum.median_us, sum.p99_us,
                sum.median_us / memory.median_us, sum.p99_us / memory.p99_us);
  }

  // Agents: launch, one step of W puts, the end at its home (the same node); launch to end.
  const char* source = R"(local M = {}
function M.start(s)
  for i = 1, s.writes do node.call("kv.put", "agent" .. i, s.payload) end
  return s.writes
end
return M)";
  auto bundle = single_file_bundle("writer", source);
  if (!bundle) {
    std::fprintf(stderr, "bundle: %s\n", bundle.error().message.c_str());
    return 1;
  }
  const int widths[] = {1, writes};
  std::vector<std::vector<double>> agent_ms(6);  // [width][setup]
  for (int round = 0; round < rounds; ++round) {
    for (int w = 0; w < 2; ++w) {
      for (std::size_t s = 0; s < 3; ++s) {
        for (int i = 0; i < agents / rounds + 1; ++i) {
          AgentLaunch l;
          l.bundle = *bundle;
          l.state = Value::table();
          l.state.set("writes", widths[w]);
          l.state.set("payload", std::string(100, 'v'));
          const auto t0 = std::chrono::steady_clock::now();
          auto id = client.launch(addresses[s], l);
          auto ended = id ? client.wait_agent(addresses[s], *id, std::chrono::seconds(30)) : Result<AgentStatus>(id.error());
          const auto t1 = std::chrono::steady_clock::now();
          if (!ended || ended->status != AgentState::finished) {
            std::fprintf(stderr, "%s: agent: %s\n", setups[s].name, ended ? ended->reason.c_str() : ended.error().message.c_str());
            return 1;
          }
          agent_ms[static_cast<std::size_t>(w) * 3 + s].push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        }
      }
    }
  }
  std::printf("\nagents launched and waited for (launch to end), one step of W kv.put calls, alternating\n");
  std::printf("%-8s %6s %10s %12s %10s %14s\n", "store", "W", "samples", "median_us", "p99_us", "median/W=1");
  for (std::size_t s = 0; s < 3; ++s) {
    const auto one = bench::summarize(agent_ms[s]);
    for (int w = 0; w < 2; ++w) {
      const auto sum = bench::summarize(agent_ms[static_cast<std::size_t>(w) * 3 + s]);
      std::printf("%-8s %6d %10zu %12.1f %10.1f %14.2f\n", setups[s].name, widths[w], sum.samples, sum.median_us, sum.p99_us,
                  sum.median_us / one.median_us);
    }
  }
  for (auto& n : servers) n->shutdown(std::chrono::milliseconds(500));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
