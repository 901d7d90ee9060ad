// bench_migration_cost: what one hop costs a strong agent (its heap image travels and
// agent.go returns on the peer) beside a weak agent carrying the same bytes in its state
// table (restarted at a named entry), between two loopback nodes in this process, both in the
// process jail. A hop is timed from just before agent.go to the first line that runs on the
// peer (a host call stamps each), and broken into its phases from the nodes' trace files
// (migration_phases.hpp). With --criu, Debian's CRIU dumps and restores a process holding the
// same heap (bench/run_criu.sh), printed beside the strong hops.
//
//   bench_migration_cost [HOPS] [--sizes 1k,64k,1m,16m,64m] [--max-payload-mb N] [--criu]
//                        [--criu-rounds N] [--no-trace] [--csv FILE] [--codec lz4|zstd|stored]
//                        [--strong-only]
//
// HOPS per size (default 10; sizes from 16 MB on use a third, at least 2). --sizes: default
// 1k,64k,1m,16m. A size that cannot move (a TRANSFER over the frame limit) prints its row with
// the node's refusal. --csv FILE writes the table's rows (times in ms, phases zero when not
// traced, `refused` empty or the reason). --codec: how the nodes seal strong images (their
// --image-codec; default lz4). On a shared VM compare the ratios, not the figures. With
// SOJOURN_BENCH_KEEP_TRACE set, the nodes' trace files are kept (their directory is printed),
// with marks.jsonl beside them: the agent's go/arrived marks on the trace's clock.
// --strong-only: no weak rows (their ratio column is then empty), so that a whole run's CPU
// time or page faults (perf stat) are the strong hops' and their setup's alone.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/criu_side.hpp"
#include "bench/heap_fill.hpp"
#include "bench/migration_phases.hpp"
#include "bench/stats.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/bundle.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn::bench {
namespace {

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

struct Options {
  int hops = 10;
  std::vector<int> sizes_kb{1, 64, 1024, 16 * 1024};
  std::uint32_t max_payload_mb = 64;
  bool criu = false;
  int criu_rounds = 3;
  bool trace = true;
  std::string csv;  // --csv FILE: one row per size and kind, for plots
  ImageCodec codec = ImageCodec::lz4;  // --codec: NodeOptions::image_codec of both nodes
  bool weak = true;                    // --strong-only: false
};

struct Pair {
  std::vector<std::unique_ptr<Node>> nodes;
  std::vector<std::string> addr, trace;
  Marks marks;
  Pair(const Options& opt, const std::string& trace_dir) {
    int largest_kb = 0;
    for (int kb : opt.sizes_kb) largest_kb = std::max(largest_kb, kb);
    for (int i = 0; i < 2; ++i) {
      NodeOptions o;
      o.name = "bench" + std::to_string(i);
      o.peer_isolation = Isolation::process;
      o.image_codec = opt.codec;
      o.max_payload = opt.max_payload_mb << 20;  // 64 MB: a weak agent's 16 MB state and its encoding's overhead
      // 320 MB holds 16 MB of this data (a 44 MB span) with room; 64 MB makes a ~175 MB span.
      const std::uint64_t memory = std::max<std::uint64_t>(320ull << 20, static_cast<std::uint64_t>(largest_kb) << 13);
      o.default_limits = Limits{2'000'000'000, memory, 120'000};
      o.instructions_per_cpu_ms = 0;
      if (!trace_dir.empty()) o.trace = trace_dir + "/" + o.name + ".jsonl";
      trace.push_back(o.trace);
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
  std::string refused;  // the node's reason when the agent could not move
  LatencySummary hop;
  std::uint64_t raw_bytes = 0, wire_bytes = 0;  // per hop: arena span and sealed image (strong), or state
  PhaseMedians phases;
};

Row run(Pair& p, Mobility mobility, int kb, int hops) {
  {
    std::lock_guard lock(p.marks.mutex);
    p.marks.times.clear();
  }
  auto bundle = single_file_bundle("cost", std::string(kFillLua) + (mobility == Mobility::strong ? kStrong : kWeak),
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
  auto s = p.nodes[0]->wait_agent("", *id, std::chrono::minutes(20));
  if (!s) throw std::runtime_error(s.error().message);
  Row row;
  // Stranded (it could not move: the reason names the refusal) or failed at a step. A stranded
  // agent stays on its node (with its image) until the bench ends: the node has no call to
  // drop it, so put the sizes that may be refused last.
  if (s->status != AgentState::finished) {
    row.refused = std::string(agent_state_name(s->status)) + ": " + s->reason;
    return row;
  }
  std::vector<Mark> marks;
  {
    std::lock_guard lock(p.marks.mutex);
    marks = p.marks.times;
  }
  if (!p.trace[0].empty() && std::getenv("SOJOURN_BENCH_KEEP_TRACE") != nullptr) {
    // Beside the nodes' trace files: the agent's own marks, on the same clock (mono_ns).
    const std::string path = std::filesystem::path(p.trace[0]).parent_path() / "marks.jsonl";
    if (std::FILE* f = std::fopen(path.c_str(), "a"); f != nullptr) {
      for (const Mark& m : marks) {
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(m.second.time_since_epoch()).count();
        std::fprintf(f, "{\"node\":\"bench\",\"mono_ns\":%lld,\"kind\":\"mark_%s\",\"agent\":\"%s\"}\n",
                     static_cast<long long>(ns), m.first.c_str(), id->c_str());
      }
      std::fclose(f);
    }
  }
  std::vector<HopWindow> windows = hop_windows(marks);
  std::vector<double> samples;
  for (const HopWindow& w : windows) samples.push_back(micros(w.arrived - w.go));
  row.hop = summarize(samples);
  for (std::size_t i = 0; i + 1 < s->hops.size() && i < windows.size(); ++i) {
    const AgentHop& h = s->hops[i];
    if (mobility == Mobility::strong) {
      row.raw_bytes = h.image_raw_bytes;
      row.wire_bytes = h.image_bytes;
      windows[i].image_us = static_cast<double>(h.image_us);
      windows[i].restore_us = static_cast<double>(s->hops[i + 1].restore_us);
    } else {
      row.wire_bytes = s->hops[i + 1].state_bytes;
      row.raw_bytes = row.wire_bytes;
    }
  }
  if (!p.trace[0].empty()) row.phases = phase_medians(windows, read_trace_events(p.trace, *id));
  return row;
}

std::string size_name(int kb) { return kb >= 1024 ? std::to_string(kb / 1024) + " MB" : std::to_string(kb) + " KB"; }

// "1k,64k,1m,16m,64m" in KB; an empty vector when a piece is not NUMBER[k|m].
std::vector<int> parse_sizes(const std::string& text) {
  std::vector<int> out;
  std::size_t at = 0;
  while (at <= text.size()) {
    std::size_t comma = text.find(',', at);
    std::string piece = text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    char* end = nullptr;
    long n = std::strtol(piece.c_str(), &end, 10);
    std::string unit(end);
    if (piece.empty() || end == piece.c_str() || n <= 0 || n > 1024 * 1024) return {};
    if (unit == "k" || unit == "K") {
      out.push_back(static_cast<int>(n));
    } else if ((unit == "m" || unit == "M") && n <= 1024) {
      out.push_back(static_cast<int>(n * 1024));
    } else {
      return {};
    }
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

void usage() {
  std::fprintf(stderr,
               "usage: bench_migration_cost [HOPS] [--sizes 1k,64k,1m,16m,64m] [--max-payload-mb N] [--criu]\n"
               "                            [--criu-rounds N] [--no-trace] [--csv FILE] [--codec lz4|zstd|stored]\n"
               "                            [--strong-only]\n");
}

std::string fmt_ms(double us) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", us / 1000);
  return b;
}

// One CSV row: the table's columns in milliseconds and bytes (data_kb: strings of 1,000 bytes
// each); `refused` holds the reason, quoted.
void csv_row(std::FILE* f, int kb, const char* kind, const Row& row, const Row& weak) {
  if (f == nullptr) return;
  std::string reason = row.refused;
  for (std::size_t at = 0; (at = reason.find('"', at)) != std::string::npos; at += 2) reason.insert(at, 1, '"');
  const PhaseMedians& ph = row.phases;
  const double ratio = weak.refused.empty() && weak.hop.median_us > 0 ? row.hop.median_us / weak.hop.median_us : 0;
  std::fprintf(f, "%s,%d,%llu,%llu,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,\"%s\"\n", kind,
               kb, static_cast<unsigned long long>(row.raw_bytes),
               static_cast<unsigned long long>(row.wire_bytes), row.hop.median_us / 1000, row.hop.p99_us / 1000,
               ph.image_us / 1000, ph.serialize_us / 1000, ph.transfer_us / 1000, ph.restore_us / 1000,
               ph.first_line_us / 1000, ph.other_us / 1000, ratio, reason.c_str());
}

void print_row(int kb, const char* kind, const Row& row, const Row& weak) {
  if (!row.refused.empty()) {
    std::printf("%-6s %-7s refused: %s\n", size_name(kb).c_str(), kind, row.refused.c_str());
    return;
  }
  const bool strong = std::string(kind) == "strong";
  const PhaseMedians& ph = row.phases;
  auto phase = [&](double us, bool have) { return have ? fmt_ms(us) : std::string("-"); };
  char ratio[32] = "-";
  if (weak.refused.empty() && weak.hop.median_us > 0) std::snprintf(ratio, sizeof ratio, "%.2f", row.hop.median_us / weak.hop.median_us);
  std::printf("%-6s %-7s %12llu %12llu %10.2f %10.2f %9s %9s %9s %9s %9s %9s %7s\n", size_name(kb).c_str(), kind,
              static_cast<unsigned long long>(row.raw_bytes), static_cast<unsigned long long>(row.wire_bytes),
              row.hop.median_us / 1000, row.hop.p99_us / 1000, phase(ph.image_us, strong).c_str(),
              phase(ph.serialize_us, ph.traced).c_str(), phase(ph.transfer_us, ph.traced).c_str(),
              phase(ph.restore_us, ph.traced).c_str(), phase(ph.first_line_us, ph.traced).c_str(),
              phase(ph.other_us, ph.traced).c_str(), ratio);
}

}  // namespace
}  // namespace sojourn::bench

int main(int argc, char** argv) {
  using namespace sojourn;
  using namespace sojourn::bench;
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--sizes" && i + 1 < argc) {
      opt.sizes_kb = parse_sizes(argv[++i]);
      if (opt.sizes_kb.empty()) {
        std::fprintf(stderr, "bench_migration_cost: --sizes expects sizes like 1k,64k,1m,16m,64m\n");
        return 2;
      }
    } else if (a == "--max-payload-mb" && i + 1 < argc) {
      long mb = std::strtol(argv[++i], nullptr, 10);
      if (mb < 1 || mb > 4095) {
        std::fprintf(stderr, "bench_migration_cost: --max-payload-mb expects 1 to 4095\n");
        return 2;
      }
      opt.max_payload_mb = static_cast<std::uint32_t>(mb);
    } else if (a == "--criu") {
      opt.criu = true;
    } else if (a == "--criu-rounds" && i + 1 < argc) {
      opt.criu_rounds = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--csv" && i + 1 < argc) {
      opt.csv = argv[++i];
    } else if (a == "--codec" && i + 1 < argc) {
      auto codec = parse_image_codec(argv[++i]);
      if (!codec) {
        std::fprintf(stderr, "bench_migration_cost: --codec expects lz4, zstd or stored\n");
        return 2;
      }
      opt.codec = *codec;
    } else if (a == "--no-trace") {
      opt.trace = false;
    } else if (a == "--strong-only") {
      opt.weak = false;
    } else if (!a.empty() && a[0] != '-' && std::atoi(a.c_str()) > 0) {
      opt.hops = std::max(2, std::atoi(a.c_str()));
    } else {
      usage();
      return 2;
    }
  }
  set_log_level(LogLevel::error);
  std::string trace_dir;
  if (opt.trace) {
    char tmpl[] = "/tmp/sojourn-migration-cost.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      std::perror("bench_migration_cost: mkdtemp");
      return 1;
    }
    trace_dir = tmpl;
  }
  std::FILE* csv = nullptr;
  if (!opt.csv.empty()) {
    csv = std::fopen(opt.csv.c_str(), "w");
    if (csv == nullptr) {
      std::fprintf(stderr, "bench_migration_cost: cannot write %s\n", opt.csv.c_str());
      return 2;
    }
    std::fprintf(csv, "kind,data_kb,raw_bytes,wire_bytes,median_ms,p99_ms,image_ms,serialize_ms,transfer_ms,"
                      "restore_ms,first_line_ms,other_ms,ratio_to_weak,refused\n");
  }
  int rc = 0;
  try {
    Pair p(opt, trace_dir);
    std::vector<StrongFigures> strong_rows;
    std::printf("one hop, agent.go to the next line on the peer, process jail, %d hops per row (a third from 16 MB), "
                "frame limit %u MiB, images %s, milliseconds (phases: medians over the hops)\n",
                opt.hops, opt.max_payload_mb, std::string(image_codec_name(opt.codec)).c_str());
    std::printf("%-6s %-7s %12s %12s %10s %10s %9s %9s %9s %9s %9s %9s %7s\n", "data", "kind", "raw_bytes", "wire_bytes",
                "median_ms", "p99_ms", "image_ms", "serial_ms", "xfer_ms", "restore", "1st_line", "other_ms", "ratio");
    for (int kb : opt.sizes_kb) {
      const int n = kb >= 16 * 1024 ? std::max(2, opt.hops / 3) : opt.hops;
      Row weak;  // not run: no ratio for the strong row (its median stays 0)
      if (opt.weak) {
        weak = run(p, Mobility::weak, kb, n);
        print_row(kb, "weak", weak, weak);
        csv_row(csv, kb, "weak", weak, weak);
        std::fflush(stdout);
      }
      Row strong = run(p, Mobility::strong, kb, n);
      print_row(kb, "strong", strong, weak);
      csv_row(csv, kb, "strong", strong, weak);
      std::fflush(stdout);
      StrongFigures f;
      f.kb = kb;
      f.refused = strong.refused;
      f.hop_us = strong.hop.median_us;
      f.raw_bytes = strong.raw_bytes;
      f.wire_bytes = strong.wire_bytes;
      strong_rows.push_back(f);
    }
    std::printf("\nimage_ms: sealing the heap at the source; serial_ms: image_ms and the TRANSFER's encoding;\n"
                "xfer_ms: the TRANSFER sent to received; restore: the destination's checks and decoding, and for\n"
                "strong the image opened into the guest's arena; 1st_line: from there to the first line running\n"
                "(the step scheduled, a fresh guest; the arrival report home is not waited for); other_ms: the\n"
                "rest (the step's end, the hand-over scheduled); ratio: this row's median over the weak row's.\n");
    if (opt.criu) rc = print_criu_side_by_side(strong_rows, opt.criu_rounds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_migration_cost: %s\n", e.what());
    rc = 1;
  }
  if (csv != nullptr) std::fclose(csv);
  if (!trace_dir.empty() && std::getenv("SOJOURN_BENCH_KEEP_TRACE") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(trace_dir, ec);
  } else if (!trace_dir.empty()) {
    std::fprintf(stderr, "bench_migration_cost: trace files kept in %s\n", trace_dir.c_str());
  }
  return rc;
}
