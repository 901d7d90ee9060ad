// `sojourn experiment itinerary`: one query at each of K data nodes, done three ways —
// client-server to each node (cs), K remote evaluations (rev), one mobile agent visiting the K
// nodes (ma) — as in the mobile-agent vs client/server studies (Gray et al. 2001), over the
// profile's first link between every pair of nodes, sweeping K and the data each node holds.
// docs/experiments.md, "itinerary".
#include <algorithm>
#include <cstdio>
#include <sstream>
#include <tuple>

#include "agents/experiments/experiment.hpp"
#include "agents/experiments/testbed.hpp"

namespace sojourn::experiments {

namespace {

struct Row {
  Paradigm paradigm = Paradigm::cs;
  std::string link;
  double rtt_ms = 0;
  std::uint64_t bandwidth_bps = 0;
  std::uint32_t nodes = 0;
  std::uint64_t data_bytes = 0;
  double measured_ms = 0, predicted_ms = 0;
  std::uint64_t wire_bytes = 0;
};

constexpr Paradigm kWays[] = {Paradigm::cs, Paradigm::rev, Paradigm::ma};
constexpr const char* kColumns = "paradigm,link,rtt_ms,bandwidth_bps,nodes,data_bytes,measured_ms,predicted_ms,wire_bytes";

std::string csv_of(std::vector<Row> rows) {
  // Each paradigm's line over K contiguous, per data size (plot.gp draws them as lines).
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return std::tie(a.data_bytes, a.paradigm, a.nodes) < std::tie(b.data_bytes, b.paradigm, b.nodes);
  });
  std::string out = std::string(kColumns) + "\n";
  char buf[512];
  for (const auto& r : rows) {
    std::snprintf(buf, sizeof buf, "%s,%s,%.3f,%llu,%u,%llu,%.3f,%.3f,%llu\n", std::string(paradigm_name(r.paradigm)).c_str(),
                  r.link.c_str(), r.rtt_ms, static_cast<unsigned long long>(r.bandwidth_bps), r.nodes,
                  static_cast<unsigned long long>(r.data_bytes), r.measured_ms, r.predicted_ms,
                  static_cast<unsigned long long>(r.wire_bytes));
    out += buf;
  }
  return out;
}

std::string size_label(std::uint64_t b) {
  if (b >= 1'000'000 && b % 1'000'000 == 0) return std::to_string(b / 1'000'000) + " MB";
  if (b >= 1'000 && b % 1'000 == 0) return std::to_string(b / 1'000) + " KB";
  return std::to_string(b) + " B";
}

std::string plot_script(const ProfileLink& link, const std::vector<std::uint64_t>& sizes) {
  std::ostringstream gp;
  gp << "# Redraws itinerary.png from results.csv: gnuplot plot.gp (written by sojourn experiment itinerary)\n"
     << "set terminal pngcairo size " << 440 * sizes.size() + 80 << ",460 font 'sans,9'\n"
     << "set output 'itinerary.png'\nset datafile separator ','\n"
     << "set multiplot layout 1," << sizes.size() << " title 'One query at each of K nodes over " << link.name << " (RTT "
     << link.rtt_ms << " ms, " << link.bandwidth_bps / 1'000'000
     << " Mbit/s between every pair): measured (points) and the model (lines)'\n"
     << "set xlabel 'data nodes K'\nset ylabel 'time (ms)'\nset grid\nset key top left\n"
     << "set style line 1 lc rgb '#c0392b' pt 7\nset style line 2 lc rgb '#2471a3' pt 5\n"
     << "set style line 3 lc rgb '#7d3c98' pt 11\n";
  const char* names[] = {"cs", "rev", "ma"};
  for (auto size : sizes) {
    gp << "set title '" << size_label(size) << " at each node'\nplot ";
    for (int i = 0; i < 3; ++i) {
      std::string sel = "(strcol(1) eq '" + std::string(names[i]) + "' && $6 == " + std::to_string(size) + ")";
      gp << (i ? ", \\\n     " : "") << "'results.csv' using 5:(" << sel << " ? $7 : 1/0) with points ls " << i + 1
         << " title '" << names[i] << "', \\\n     'results.csv' using 5:(" << sel << " ? $8 : 1/0) with lines ls " << i + 1
         << " dt 2 notitle";
    }
    gp << "\n";
  }
  gp << "unset multiplot\n";
  return gp.str();
}

int fail(const std::string& what) {
  std::fprintf(stderr, "sojourn: error: %s\n", what.c_str());
  return 1;
}

}  // namespace

int run_itinerary(const ExperimentOptions& o) {
  auto profile = open_experiment(o);
  if (!profile) return 2;
  const FixedCosts fixed = fixed_costs_for(o);
  const ProfileLink& link = profile->links.front();
  std::vector<std::uint32_t> ks = {1, 2, 4, 8, 16};
  std::vector<std::uint64_t> sizes = {1'000, 256'000, 4'000'000};
  int reps = 3;
  if (o.quick) {
    ks = {1, 2, 4};
    sizes = {1'000, 1'000'000};
    reps = 1;
  }
  const std::uint32_t most = *std::max_element(ks.begin(), ks.end());
  const LinkSpec spec = one_way_spec(link);
  Progress progress(ks.size() * sizes.size() * 3);
  std::vector<Row> rows;
  {
    ItineraryTestbed bed(spec, most, o.seed, o.out + "/nodes");
    if (auto started = bed.start(); !started) {
      progress.done();
      return fail("the itinerary testbed on " + link.name + ": " + started.error().message);
    }
    for (auto size : sizes) {
      for (auto k : ks) {
        for (Paradigm p : kWays) {
          progress.step(std::string(paradigm_name(p)) + " K=" + std::to_string(k) + " data " + size_label(size));
          std::vector<std::pair<double, std::uint64_t>> runs;
          for (int r = 0; r < reps; ++r) {
            auto run = bed.run(p, k, size);
            if (!run) {
              progress.done();
              return fail(std::string(paradigm_name(p)) + " K=" + std::to_string(k) + " data " + size_label(size) + ": " +
                          run.error().message);
            }
            runs.emplace_back(run->measured_ms, run->wire_bytes);
          }
          std::sort(runs.begin(), runs.end());
          ItineraryWorkload w;
          w.rtt_ms = link.rtt_ms;
          w.bandwidth_bps = link.bandwidth_bps;
          w.nodes = k;
          w.request_bytes = ItineraryTestbed::kRequestBytes;
          w.data_bytes = size;
          w.code_bytes = ItineraryTestbed::kCodeBytes;
          auto predicted = predict_itinerary(p, w, fixed);
          if (!predicted) return fail(predicted.error().message);
          rows.push_back(Row{p, link.name, link.rtt_ms, link.bandwidth_bps, k, size, runs[runs.size() / 2].first,
                             predicted->predicted_ms, runs[runs.size() / 2].second});
        }
      }
    }
  }
  progress.done();
  std::ostringstream extra;
  extra << "\"link\": \"" << link.name << "\", \"profile_source\": \"" << profile->source << "\", \"repetitions\": " << reps
        << ", \"isolation\": \"trusted\", \"request_bytes\": " << ItineraryTestbed::kRequestBytes
        << ", \"code_bytes\": " << ItineraryTestbed::kCodeBytes
        << ", \"topology\": \"a client and K data nodes, every pair joined by the same link\""
        << ", \"measured\": \"the median of the repetitions, connections warm, code cold (new each run)\"";
  Result<void> written = write_file(o.out + "/results.csv", csv_of(rows));
  if (written) written = write_meta(o, fixed, extra.str());
  if (written) written = merge_node_traces(o.out);
  if (written) written = write_file(o.out + "/plot.gp", plot_script(link, sizes));
  if (!written) return fail(written.error().message);
  auto plotted = run_gnuplot(o.out, "plot.gp");

  std::printf("%-4s %6s %10s %12s %12s %12s\n", "way", "K", "data", "measured_ms", "predicted_ms", "wire_bytes");
  for (const auto& r : rows) {
    std::printf("%-4s %6u %10s %12.1f %12.1f %12llu\n", std::string(paradigm_name(r.paradigm)).c_str(), r.nodes,
                size_label(r.data_bytes).c_str(), r.measured_ms, r.predicted_ms, static_cast<unsigned long long>(r.wire_bytes));
  }
  std::printf("over %s (RTT %.1f ms, %llu bit/s between every pair)\n", link.name.c_str(), link.rtt_ms,
              static_cast<unsigned long long>(link.bandwidth_bps));
  std::printf("wrote %s/results.csv, trace.jsonl, meta.json, plot.gp%s\n", o.out.c_str(), plotted ? ", itinerary.png" : "");
  if (!plotted) return fail(plotted.error().message);
  return 0;
}

}  // namespace sojourn::experiments
