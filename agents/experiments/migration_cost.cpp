// `sojourn experiment migration-cost`: what moving an agent costs as its state grows (1 KB to
// 64 MB) over several bandwidths: the hop's time, its downtime (agent.go to the arrival) and
// the bytes on the wire, beside the model. Weak mobility only: the node does not ship strong
// heap images yet (issue 13's node wiring), so no `strong` rows are written.
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
  std::uint64_t bandwidth_bps = 0, state_bytes = 0, wire_bytes = 0;
  double measured_ms = 0, predicted_ms = 0, downtime_ms = 0;
};

// Launch to the end heard at home: an OFFER's round trip, the TRANSFER's one way with the
// state, the arrival report's round trip, the end report's one way: three round trips.
double predicted_hop_ms(double rtt_ms, std::uint64_t bps, std::uint64_t bytes, const FixedCosts& f) {
  double wire = bps ? static_cast<double>(bytes) * 8.0 / static_cast<double>(bps) * 1000.0 : 0.0;
  return 3 * rtt_ms + wire + static_cast<double>(bytes) / 1000.0 * f.state_per_kb_ms + f.hop_ms;
}

}  // namespace

int run_migration_cost(const ExperimentOptions& o) {
  auto profile = find_link_profile(o.profile);
  if (!profile) {
    std::fprintf(stderr, "sojourn: error: %s\n", profile.error().message.c_str());
    return 2;
  }
  if (auto ok = prepare_out_dir(o.out); !ok) {
    std::fprintf(stderr, "sojourn: error: %s\n", ok.error().message.c_str());
    return 2;
  }
  const FixedCosts fixed = fixed_costs_for(o);
  const ProfileLink& link = profile->links.front();
  std::vector<std::uint64_t> states = {1'000, 16'000, 256'000, 1'000'000, 4'000'000, 16'000'000, 64'000'000};
  std::vector<std::uint64_t> bandwidths = {10'000'000, 100'000'000, 1'000'000'000};
  if (o.quick) {
    states = {1'000, 64'000, 1'000'000};
    bandwidths = {100'000'000, 1'000'000'000};
  }
  Progress progress(states.size() * bandwidths.size());
  std::vector<Row> rows;
  for (std::size_t bi = 0; bi < bandwidths.size(); ++bi) {
    ProfileLink l = link;
    l.bandwidth_bps = bandwidths[bi];
    const LinkSpec spec = one_way_spec(l);
    Testbed bed(&spec, o.seed + bi, o.out + "/nodes");
    if (auto started = bed.start(); !started) {
      progress.done();
      std::fprintf(stderr, "sojourn: error: the testbed: %s\n", started.error().message.c_str());
      return 1;
    }
    for (auto bytes : states) {
      progress.step("weak state " + std::to_string(bytes) + " B at " + std::to_string(bandwidths[bi]) + " bit/s");
      auto run = bed.run_migration(bytes);
      if (!run) {
        progress.done();
        std::fprintf(stderr, "sojourn: error: state %llu B: %s\n", static_cast<unsigned long long>(bytes),
                     run.error().message.c_str());
        return 1;
      }
      rows.push_back(Row{"weak", link.name, link.rtt_ms, bandwidths[bi], bytes, run->wire_bytes, run->measured_ms,
                         predicted_hop_ms(link.rtt_ms, bandwidths[bi], bytes, fixed), run->downtime_ms});
    }
  }
  progress.done();
  std::string csv = "kind,link,rtt_ms,bandwidth_bps,state_bytes,measured_ms,predicted_ms,downtime_ms,wire_bytes\n";
  char buf[256];
  for (const auto& r : rows) {
    std::snprintf(buf, sizeof buf, "%s,%s,%.3f,%llu,%llu,%.3f,%.3f,%.3f,%llu\n", r.kind.c_str(), r.link.c_str(), r.rtt_ms,
                  static_cast<unsigned long long>(r.bandwidth_bps), static_cast<unsigned long long>(r.state_bytes),
                  r.measured_ms, r.predicted_ms, r.downtime_ms, static_cast<unsigned long long>(r.wire_bytes));
    csv += buf;
  }
  std::ostringstream gp;
  gp << "# Redraws migration-cost.png from results.csv: gnuplot plot.gp (written by sojourn experiment migration-cost)\n"
     << "set terminal pngcairo size 900,600 font 'sans,9'\nset output 'migration-cost.png'\nset datafile separator ','\n"
     << "set title 'Moving a weak agent over " << link.name << " (RTT " << link.rtt_ms
     << " ms): downtime (points), hop (open), model (lines)'\n"
     << "set xlabel 'state (bytes)'\nset ylabel 'time (ms)'\nset logscale xy\nset grid\nset key top left\nplot ";
  for (std::size_t i = 0; i < bandwidths.size(); ++i) {
    std::string sel = "($4 == " + std::to_string(bandwidths[i]) + ")";
    std::string name = std::to_string(bandwidths[i] / 1'000'000) + " Mbit/s";
    gp << (i ? ", \\\n     " : "") << "'results.csv' using 5:(" << sel << " ? $8 : 1/0) with points pt 7 lc " << i + 1
       << " title '" << name << " downtime', \\\n     'results.csv' using 5:(" << sel << " ? $6 : 1/0) with points pt 6 lc "
       << i + 1 << " notitle, \\\n     'results.csv' using 5:(" << sel << " ? $7 : 1/0) with lines dt 2 lc " << i + 1
       << " notitle";
  }
  gp << "\n";
  std::ostringstream extra;
  extra << "\"link\": \"" << link.name << "\", \"strong\": \"not yet: the node does not ship heap images yet "
        << "(issue 13's node wiring); only weak rows\", \"downtime\": \"departure (agent.go) at the source to arrival at "
        << "the destination, from the nodes' traces\"";
  Result<void> written = write_file(o.out + "/results.csv", csv);
  if (written) written = write_meta(o, fixed, extra.str());
  if (written) written = merge_node_traces(o.out);
  if (written) written = write_file(o.out + "/plot.gp", gp.str());
  if (written) written = run_gnuplot(o.out, "plot.gp");
  std::printf("%-5s %14s %12s %12s %12s %12s %12s\n", "kind", "bandwidth_bps", "state_bytes", "measured_ms", "predicted_ms",
              "downtime_ms", "wire_bytes");
  for (const auto& r : rows) {
    std::printf("%-5s %14llu %12llu %12.1f %12.1f %12.1f %12llu\n", r.kind.c_str(),
                static_cast<unsigned long long>(r.bandwidth_bps), static_cast<unsigned long long>(r.state_bytes),
                r.measured_ms, r.predicted_ms, r.downtime_ms, static_cast<unsigned long long>(r.wire_bytes));
  }
  if (!written) {
    std::fprintf(stderr, "sojourn: error: %s\n", written.error().message.c_str());
    return 1;
  }
  std::printf("wrote %s/results.csv, trace.jsonl, meta.json, plot.gp, migration-cost.png (weak only: strong not yet)\n",
              o.out.c_str());
  return 0;
}

}  // namespace sojourn::experiments
