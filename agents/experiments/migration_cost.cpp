// `sojourn experiment migration-cost`: what moving an agent costs as its state grows (1 KB to
// 64 MB) over several bandwidths: the hop's time, its downtime (agent.go to the next
// instruction) broken into its phases (address, serialize, transfer, restore, resume, from the
// nodes' traces) and the bytes (raw, compressed, on the wire), beside the model. Weak rows (a
// state table) and strong rows (a heap image, at the process level).
#include <algorithm>
#include <cstdio>
#include <sstream>

#include "agents/experiments/experiment.hpp"
#include "agents/experiments/testbed.hpp"

namespace sojourn::experiments {

namespace {

struct Row {
  std::string kind = "weak";
  std::string link;
  double rtt_ms = 0;
  std::uint64_t bandwidth_bps = 0, state_bytes = 0;
  double predicted_ms = 0;
  Testbed::MigrationRun run;
};

constexpr const char* kColumns =
    "kind,link,rtt_ms,bandwidth_bps,state_bytes,measured_ms,predicted_ms,downtime_ms,wire_bytes,"
    "address_ms,serialize_ms,transfer_ms,restore_ms,resume_ms,raw_bytes,compressed_bytes,transfer_bytes";

// Launch to the end heard at home: the TRANSFER's one way with the state (its code is at the
// destination already: the testbed's warm-up took it there), the end report's one way: one
// round trip. The COMMIT and the arrival report travel while the agent runs.
double predicted_hop_ms(double rtt_ms, std::uint64_t bps, std::uint64_t bytes, const FixedCosts& f) {
  double wire = bps ? static_cast<double>(bytes) * 8.0 / static_cast<double>(bps) * 1000.0 : 0.0;
  return rtt_ms + wire + static_cast<double>(bytes) / 1000.0 * f.state_per_kb_ms + f.hop_ms;
}

// A strong hop, given its image's measured size: the same round trips and the image over the
// bandwidth (sealing and restoring the heap are not in the calibration).
double predicted_strong_hop_ms(double rtt_ms, std::uint64_t bps, std::uint64_t image_bytes, const FixedCosts& f) {
  double wire = bps ? static_cast<double>(image_bytes) * 8.0 / static_cast<double>(bps) * 1000.0 : 0.0;
  return rtt_ms + wire + f.hop_ms;
}

}  // namespace

int run_migration_cost(const ExperimentOptions& o) {
  auto profile = open_experiment(o);
  if (!profile) return 2;
  const FixedCosts fixed = fixed_costs_for(o);
  const ProfileLink& link = profile->links.front();
  std::vector<std::uint64_t> states = {1'000, 16'000, 256'000, 1'000'000, 4'000'000, 16'000'000, 64'000'000};
  std::vector<std::uint64_t> strong_states = {1'000, 64'000, 1'000'000, 16'000'000};
  std::vector<std::uint64_t> bandwidths = {10'000'000, 100'000'000, 1'000'000'000};
  if (o.quick) {
    states = {1'000, 64'000, 1'000'000};
    strong_states = {1'000, 64'000, 1'000'000};
    bandwidths = {100'000'000, 1'000'000'000};
  }
  Progress progress((states.size() + strong_states.size()) * bandwidths.size());
  std::vector<Row> rows;
  std::string strong_skipped;  // why there are no strong rows, if there are none
  for (std::size_t bi = 0; bi < bandwidths.size(); ++bi) {
    ProfileLink l = link;
    l.bandwidth_bps = bandwidths[bi];
    const LinkSpec spec = one_way_spec(l);
    for (bool strong : {false, true}) {
      if (strong && !strong_skipped.empty()) continue;
      // Strong agents need a jail that can image their heap: the process level.
      Testbed bed(&spec, o.seed + bi, o.out + "/nodes", strong ? Isolation::process : Isolation::trusted);
      if (auto started = bed.start(); !started) {
        if (strong) {
          strong_skipped = started.error().message;
          continue;
        }
        progress.done();
        std::fprintf(stderr, "sojourn: error: the testbed: %s\n", started.error().message.c_str());
        return 1;
      }
      const char* kind = strong ? "strong" : "weak";
      for (auto bytes : strong ? strong_states : states) {
        progress.step(std::string(kind) + " state " + std::to_string(bytes) + " B at " + std::to_string(bandwidths[bi]) +
                      " bit/s");
        auto run = bed.run_migration(bytes, strong);
        if (!run) {
          progress.done();
          std::fprintf(stderr, "sojourn: error: %s state %llu B: %s\n", kind, static_cast<unsigned long long>(bytes),
                       run.error().message.c_str());
          return 1;
        }
        const double predicted = strong ? predicted_strong_hop_ms(link.rtt_ms, bandwidths[bi], run->compressed_bytes, fixed)
                                        : predicted_hop_ms(link.rtt_ms, bandwidths[bi], bytes, fixed);
        rows.push_back(Row{kind, link.name, link.rtt_ms, bandwidths[bi], bytes, predicted, *run});
      }
    }
  }
  progress.done();
  std::string csv = std::string(kColumns) + "\n";
  char buf[512];
  for (const auto& r : rows) {
    const auto& m = r.run;
    std::snprintf(buf, sizeof buf, "%s,%s,%.3f,%llu,%llu,%.3f,%.3f,%.3f,%llu,%.3f,%.3f,%.3f,%.3f,%.3f,%llu,%llu,%llu\n",
                  r.kind.c_str(), r.link.c_str(), r.rtt_ms, static_cast<unsigned long long>(r.bandwidth_bps),
                  static_cast<unsigned long long>(r.state_bytes), m.measured_ms, r.predicted_ms, m.downtime_ms,
                  static_cast<unsigned long long>(m.wire_bytes), m.address_ms, m.serialize_ms, m.transfer_ms, m.restore_ms,
                  m.resume_ms, static_cast<unsigned long long>(m.raw_bytes), static_cast<unsigned long long>(m.compressed_bytes),
                  static_cast<unsigned long long>(m.transfer_bytes));
    csv += buf;
  }
  std::ostringstream gp;
  gp << "# Redraws migration-cost.png from results.csv: gnuplot plot.gp (written by sojourn experiment migration-cost)\n"
     << "set terminal pngcairo size 900,600 font 'sans,9'\nset output 'migration-cost.png'\nset datafile separator ','\n"
     << "set title 'Moving an agent over " << link.name << " (RTT " << link.rtt_ms
     << " ms): weak downtime (filled), weak hop (open), strong downtime (triangles), model (lines)'\n"
     << "set xlabel 'state (bytes)'\nset ylabel 'time (ms)'\nset logscale xy\nset grid\nset key top left\nplot ";
  for (std::size_t i = 0; i < bandwidths.size(); ++i) {
    std::string bw = "$4 == " + std::to_string(bandwidths[i]);
    std::string weak = "(strcol(1) eq 'weak' && " + bw + ")", strong = "(strcol(1) eq 'strong' && " + bw + ")";
    std::string name = std::to_string(bandwidths[i] / 1'000'000) + " Mbit/s";
    gp << (i ? ", \\\n     " : "") << "'results.csv' using 5:(" << weak << " ? $8 : 1/0) with points pt 7 lc " << i + 1
       << " title '" << name << " downtime', \\\n     'results.csv' using 5:(" << weak << " ? $6 : 1/0) with points pt 6 lc "
       << i + 1 << " notitle, \\\n     'results.csv' using 5:(" << weak << " ? $7 : 1/0) with lines dt 2 lc " << i + 1
       << " notitle, \\\n     'results.csv' using 5:(" << strong << " ? $8 : 1/0) with points pt 9 lc " << i + 1
       << " notitle";
  }
  gp << "\n";
  std::ostringstream extra;
  extra << "\"link\": \"" << link.name << "\", \"strong\": \""
        << (strong_skipped.empty() ? std::string("heap images at the process level")
                                   : "skipped: " + strong_skipped)
        << "\", \"downtime\": \"agent.go at the source to the next instruction at the destination, from the nodes' "
        << "traces: departure to arrival, plus a strong step's heap sealing before its departure and restoring after "
        << "its arrival\", \"state_content\": \"a string of repeated 's' (compresses to almost nothing)\"";
  Result<void> written = write_file(o.out + "/results.csv", csv);
  if (written) written = write_meta(o, fixed, extra.str());
  if (written) written = merge_node_traces(o.out);
  if (written) written = write_file(o.out + "/plot.gp", gp.str());
  if (written) written = run_gnuplot(o.out, "plot.gp");
  std::printf("%-6s %13s %11s %11s %11s %11s %9s %9s %9s %9s %9s %11s %11s\n", "kind", "bandwidth_bps", "state_bytes",
              "measured_ms", "predicted", "downtime_ms", "address", "serialize", "transfer", "restore", "resume",
              "compressed", "wire_bytes");
  for (const auto& r : rows) {
    const auto& m = r.run;
    std::printf("%-6s %13llu %11llu %11.1f %11.1f %11.1f %9.1f %9.1f %9.1f %9.1f %9.1f %11llu %11llu\n", r.kind.c_str(),
                static_cast<unsigned long long>(r.bandwidth_bps), static_cast<unsigned long long>(r.state_bytes),
                m.measured_ms, r.predicted_ms, m.downtime_ms, m.address_ms, m.serialize_ms, m.transfer_ms, m.restore_ms,
                m.resume_ms, static_cast<unsigned long long>(m.compressed_bytes),
                static_cast<unsigned long long>(m.wire_bytes));
  }
  if (!written) {
    std::fprintf(stderr, "sojourn: error: %s\n", written.error().message.c_str());
    return 1;
  }
  if (!strong_skipped.empty()) std::printf("no strong rows: %s\n", strong_skipped.c_str());
  std::printf("wrote %s/results.csv, trace.jsonl, meta.json, plot.gp, migration-cost.png\n", o.out.c_str());
  return 0;
}

}  // namespace sojourn::experiments
