// bench_migration_cost: what one hop costs a strong agent (its heap image travels and
// agent.go returns on the peer) beside a weak agent carrying the same bytes in its state
// table (restarted at a named entry), between two loopback nodes in this process, both in the
// process jail. A hop is timed from just before agent.go to the first line that runs on the
// peer (a host call stamps each), for data of 1 KB, 1 MB and 16 MB. (64 MB of this data
// makes an image of ~70 MB, past any sensible frame limit: that size waits for streamed images.)
//
//   bench_migration_cost [hops_per_size]
//
// On a shared VM compare the ratios, not the figures.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/stats.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn::bench {
namespace {

using Clock = std::chrono::steady_clock;

double micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// The data both kinds carry: s.kb strings of 1,000 bytes of hex digits (pseudo-random, so
// zstd finds about what it would in real data), built in the first step.
constexpr const char* kFill = R"(
local function fill(kb)
  local blob, piece = {}, {}
  for i = 1, kb do
    for j = 1, 125 do piece[j] = string.format("%08x", math.random(0, 2147483647)) end
    blob[i] = table.concat(piece)
  end
  return blob
end
)";

// Strong: the loop, its counter and the data live in the heap; go returns on the peer.
constexpr const char* kStrong = R"(
function start(s)
  local blob = fill(s.kb)
  for r = 1, s.hops do
    node.call("bench.mark", "go")
    agent.go(s.stops[r % 2 + 1])
    node.call("bench.mark", "arrived")
  end
  return #blob
end
)";

// Weak: the data is the state table; each hop restarts at `hop`.
constexpr const char* kWeak = R"(
function start(s)
  s.blob = fill(s.kb)
  s.left = s.hops
  return hop(s)
end
function hop(s)
  if s.left < s.hops then node.call("bench.mark", "arrived") end
  if s.left == 0 then return #s.blob end
  s.left = s.left - 1
  node.call("bench.mark", "go")
  agent.go(s.stops[s.left % 2 + 1], "hop")
end
)";

struct Marks {
  std::mutex mutex;
  std::vector<std::pair<std::string, Clock::time_point>> times;
};

struct Pair {
  std::vector<std::unique_ptr<Node>> nodes;
  std::vector<std::string> addr;
  Marks marks;
  Pair() {
    for (int i = 0; i < 2; ++i) {
      NodeOptions o;
      o.name = "bench" + std::to_string(i);
      o.peer_isolation = Isolation::process;
      o.max_payload = 64u << 20;  // a weak agent's 16 MB state and its encoding's overhead
      o.default_limits = Limits{2'000'000'000, 320u << 20, 60'000};
      o.instructions_per_cpu_ms = 0;
      nodes.push_back(std::make_unique<Node>(o));
      auto bound = nodes.back()->listen("127.0.0.1:0");
      if (!bound) throw std::runtime_error(bound.error().message);
      addr.push_back(*bound);
      nodes.back()->register_service("bench.mark", [this](const Value& args) -> Result<Value> {
        std::lock_guard lock(marks.mutex);
        marks.times.emplace_back(args.get(1).is_string() ? args.get(1).as_string() : "", Clock::now());
        return Value{};
      });
    }
  }
};

struct Row {
  LatencySummary hop;
  std::uint64_t raw_bytes = 0, wire_bytes = 0;  // per hop: image span and image (strong), or state
  double image_us = 0, restore_us = 0;          // medians over the hops (strong)
};

double median_of(std::vector<double> v) { return summarize(std::move(v)).median_us; }

Row run(Pair& p, Mobility mobility, int kb, int hops) {
  {
    std::lock_guard lock(p.marks.mutex);
    p.marks.times.clear();
  }
  auto bundle = single_file_bundle("cost", std::string(kFill) + (mobility == Mobility::strong ? kStrong : kWeak),
                                   {"start", "hop"});
  if (!bundle) throw std::runtime_error(bundle.error().message);
  AgentLaunch l;
  l.bundle = *bundle;
  l.mobility = mobility;
  l.max_hops = static_cast<std::uint32_t>(hops + 1);
  l.state = Value::table();
  l.state.set("kb", kb);
  l.state.set("hops", hops);
  l.state.set("stops", Value::array({Value(p.addr[0]), Value(p.addr[1])}));
  auto id = p.nodes[0]->launch("", l);
  if (!id) throw std::runtime_error(id.error().message);
  auto s = p.nodes[0]->wait_agent("", *id, std::chrono::minutes(10));
  if (!s) throw std::runtime_error(s.error().message);
  if (s->status != AgentState::finished) throw std::runtime_error(s->reason);
  Row row;
  std::vector<double> samples;
  {
    std::lock_guard lock(p.marks.mutex);
    for (std::size_t i = 1; i < p.marks.times.size(); ++i) {
      if (p.marks.times[i].first == "arrived" && p.marks.times[i - 1].first == "go") {
        samples.push_back(micros(p.marks.times[i].second - p.marks.times[i - 1].second));
      }
    }
  }
  row.hop = summarize(samples);
  std::vector<double> imaging, restoring;
  for (std::size_t i = 0; i + 1 < s->hops.size(); ++i) {
    const AgentHop& h = s->hops[i];
    if (mobility == Mobility::strong) {
      row.raw_bytes = h.image_raw_bytes;
      row.wire_bytes = h.image_bytes;
      imaging.push_back(static_cast<double>(h.image_us));
      restoring.push_back(static_cast<double>(s->hops[i + 1].restore_us));
    } else {
      row.wire_bytes = s->hops[i + 1].state_bytes;
      row.raw_bytes = row.wire_bytes;
    }
  }
  row.image_us = median_of(imaging);
  row.restore_us = median_of(restoring);
  return row;
}

std::string size_name(int kb) { return kb >= 1024 ? std::to_string(kb / 1024) + " MB" : std::to_string(kb) + " KB"; }

}  // namespace
}  // namespace sojourn::bench

int main(int argc, char** argv) {
  using namespace sojourn;
  using namespace sojourn::bench;
  int hops = 10;
  if (argc > 1) hops = std::max(2, std::atoi(argv[1]));
  set_log_level(LogLevel::warn);
  try {
    Pair p;
    const std::vector<int> sizes{1, 1024, 16 * 1024};
    std::printf("one hop, agent.go to the next line on the peer, process jail, %d hops per row\n", hops);
    std::printf("%-6s %-7s %12s %12s %12s %12s %11s %11s %7s\n", "data", "kind", "raw_bytes", "wire_bytes", "median_ms",
                "p99_ms", "image_ms", "restore_ms", "ratio");
    for (int kb : sizes) {
      // The 16 MB rows pay seconds per hop: fewer of them.
      const int n = kb >= 16 * 1024 ? std::max(2, hops / 3) : hops;
      Row weak = run(p, Mobility::weak, kb, n);
      Row strong = run(p, Mobility::strong, kb, n);
      for (const auto& [kind, row] : {std::pair<const char*, const Row&>{"weak", weak}, {"strong", strong}}) {
        std::printf("%-6s %-7s %12llu %12llu %12.2f %12.2f %11.2f %11.2f %7.2f\n", size_name(kb).c_str(), kind,
                    static_cast<unsigned long long>(row.raw_bytes), static_cast<unsigned long long>(row.wire_bytes),
                    row.hop.median_us / 1000, row.hop.p99_us / 1000, row.image_us / 1000, row.restore_us / 1000,
                    row.hop.median_us / weak.hop.median_us);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_migration_cost: %s\n", e.what());
    return 1;
  }
  return 0;
}
