// `sojourn experiment paradigms`: the same task done four ways (client-server, remote
// evaluation, code-on-demand, mobile agent) over each link of a profile, sweeping the
// interactions and the reply size, measured beside the cost model. docs/experiments.md.
#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>
#include <tuple>

#include "agents/experiments/experiment.hpp"
#include "agents/experiments/testbed.hpp"

namespace sojourn::experiments {

namespace {

struct Row {
  std::string link;
  double rtt_ms = 0;
  std::uint64_t bandwidth_bps = 0;
  Paradigm paradigm = Paradigm::cs;
  Task task;
  double measured_ms = 0, predicted_ms = 0;
  std::uint64_t wire_bytes = 0;
};

constexpr const char* kColumns =
    "paradigm,link,rtt_ms,bandwidth_bps,interactions,request_bytes,reply_bytes,code_bytes,measured_ms,predicted_ms,wire_bytes";

std::string csv_of(std::vector<Row> rows) {
  // Grouped so that each paradigm's line over N is contiguous (plot.gp draws them as lines).
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return std::tie(a.link, a.task.reply_bytes, a.paradigm, a.task.interactions) <
           std::tie(b.link, b.task.reply_bytes, b.paradigm, b.task.interactions);
  });
  std::string out = std::string(kColumns) + "\n";
  char buf[512];
  for (const auto& r : rows) {
    std::snprintf(buf, sizeof buf, "%s,%s,%.3f,%llu,%u,%llu,%llu,%llu,%.3f,%.3f,%llu\n",
                  std::string(paradigm_name(r.paradigm)).c_str(), r.link.c_str(), r.rtt_ms,
                  static_cast<unsigned long long>(r.bandwidth_bps), r.task.interactions,
                  static_cast<unsigned long long>(r.task.request_bytes), static_cast<unsigned long long>(r.task.reply_bytes),
                  static_cast<unsigned long long>(r.task.code_bytes), r.measured_ms, r.predicted_ms,
                  static_cast<unsigned long long>(r.wire_bytes));
    out += buf;
  }
  return out;
}

std::string plot_script(const LinkProfile& profile, const std::vector<std::string>& links,
                        const std::vector<std::uint64_t>& replies) {
  std::ostringstream gp;
  gp << "# Redraws paradigms.png from results.csv: gnuplot plot.gp (written by sojourn experiment paradigms)\n"
     << "set terminal pngcairo size " << 420 * links.size() + 80 << "," << 380 * replies.size() + 60
     << " font 'sans,9'\nset output 'paradigms.png'\nset datafile separator ','\n"
     << "set multiplot layout " << replies.size() << "," << links.size() << " title '"
     << "The same task four ways over " << profile.name << ": measured (points) and the model (lines)'\n"
     << "set xlabel 'interactions N'\nset ylabel 'time (ms)'\nset grid\nset key top left\nset logscale x\n"
     << "set style line 1 lc rgb '#c0392b' pt 7\nset style line 2 lc rgb '#2471a3' pt 5\n"
     << "set style line 3 lc rgb '#229954' pt 9\nset style line 4 lc rgb '#7d3c98' pt 11\n";
  const char* names[] = {"cs", "rev", "cod", "ma"};
  for (auto reply : replies) {
    for (const auto& link : links) {
      gp << "set title '" << link << ", reply " << reply << " B'\nplot ";
      for (int i = 0; i < 4; ++i) {
        std::string sel = "(strcol(1) eq '" + std::string(names[i]) + "' && strcol(2) eq '" + link + "' && $7 == " +
                          std::to_string(reply) + ")";
        gp << (i ? ", \\\n     " : "") << "'results.csv' using 5:(" << sel << " ? $9 : 1/0) with points ls " << i + 1
           << " title '" << names[i] << "', \\\n     'results.csv' using 5:(" << sel << " ? $10 : 1/0) with lines ls "
           << i + 1 << " dt 2 notitle";
      }
      gp << "\n";
    }
  }
  gp << "unset multiplot\n";
  return gp.str();
}

}  // namespace

int run_paradigms(const ExperimentOptions& o) {
  auto profile = open_experiment(o);
  if (!profile) return 2;
  const FixedCosts fixed = fixed_costs_for(o);
  std::vector<ProfileLink> links = profile->links;
  std::vector<std::uint32_t> ns = {1, 2, 5, 10, 20, 50};
  std::vector<std::uint64_t> replies = {1000, 64000};
  int reps = 3;
  if (o.quick) {
    if (links.size() > 2) links.resize(2);
    ns = {1, 4, 16};
    replies = {1000};
    reps = 1;
  }
  const std::uint64_t request_bytes = 200, code_bytes = 2000;
  Progress progress(links.size() * ns.size() * replies.size() * 4);
  std::vector<Row> rows;
  std::vector<std::string> link_names;
  for (std::size_t li = 0; li < links.size(); ++li) {
    const ProfileLink& link = links[li];
    link_names.push_back(link.name);
    const LinkSpec spec = one_way_spec(link);
    Testbed bed(&spec, o.seed + li, o.out + "/nodes");
    if (auto started = bed.start(); !started) {
      progress.done();
      std::fprintf(stderr, "sojourn: error: the testbed for %s: %s\n", link.name.c_str(), started.error().message.c_str());
      return 1;
    }
    for (auto reply : replies) {
      for (auto n : ns) {
        for (Paradigm p : kParadigms) {
          progress.step(std::string(paradigm_name(p)) + " N=" + std::to_string(n) + " reply " + std::to_string(reply) +
                        " B on " + link.name);
          Task task{n, request_bytes, reply, code_bytes};
          std::vector<std::pair<double, std::uint64_t>> runs;
          for (int r = 0; r < reps; ++r) {
            auto run = bed.run(p, task);
            if (!run) {
              progress.done();
              std::fprintf(stderr, "sojourn: error: %s N=%u on %s: %s\n", std::string(paradigm_name(p)).c_str(), n,
                           link.name.c_str(), run.error().message.c_str());
              return 1;
            }
            runs.emplace_back(run->measured_ms, run->wire_bytes);
          }
          std::sort(runs.begin(), runs.end());
          Workload w{link.rtt_ms, link.bandwidth_bps, n, request_bytes, reply, code_bytes};
          Row row{link.name, link.rtt_ms, link.bandwidth_bps, p, task, runs[runs.size() / 2].first,
                  predict(p, w, fixed).predicted_ms, runs[runs.size() / 2].second};
          rows.push_back(row);
        }
      }
    }
  }
  progress.done();
  const std::string csv = csv_of(rows);
  if (auto w = write_file(o.out + "/results.csv", csv); !w) {
    std::fprintf(stderr, "sojourn: error: %s\n", w.error().message.c_str());
    return 1;
  }
  std::ostringstream extra;
  extra << "\"profile_source\": \"" << profile->source << "\", \"repetitions\": " << reps
        << ", \"isolation\": \"trusted\", \"request_bytes\": " << request_bytes << ", \"code_bytes\": " << code_bytes
        << ", \"measured\": \"the median of the repetitions, connections warm, code cold (new each run)\"";
  if (auto w = write_meta(o, fixed, extra.str()); !w) {
    std::fprintf(stderr, "sojourn: error: %s\n", w.error().message.c_str());
    return 1;
  }
  if (auto m = merge_node_traces(o.out); !m) {
    std::fprintf(stderr, "sojourn: error: %s\n", m.error().message.c_str());
    return 1;
  }
  if (auto w = write_file(o.out + "/plot.gp", plot_script(*profile, link_names, replies)); !w) {
    std::fprintf(stderr, "sojourn: error: %s\n", w.error().message.c_str());
    return 1;
  }
  auto plotted = run_gnuplot(o.out, "plot.gp");

  // The short table: the smallest and largest N of each link, for the first reply size.
  std::printf("%-14s %-4s %6s %12s %12s %10s\n", "link", "way", "N", "measured_ms", "predicted_ms", "wire_bytes");
  for (const auto& r : rows) {
    if (r.task.reply_bytes != replies.front() || (r.task.interactions != ns.front() && r.task.interactions != ns.back())) continue;
    std::printf("%-14s %-4s %6u %12.1f %12.1f %10llu\n", r.link.c_str(), std::string(paradigm_name(r.paradigm)).c_str(),
                r.task.interactions, r.measured_ms, r.predicted_ms, static_cast<unsigned long long>(r.wire_bytes));
  }
  std::printf("wrote %s/results.csv, trace.jsonl, meta.json, plot.gp%s\n", o.out.c_str(), plotted ? ", paradigms.png" : "");
  if (!plotted) {
    std::fprintf(stderr, "sojourn: error: %s\n", plotted.error().message.c_str());
    return 1;
  }
  return 0;
}

}  // namespace sojourn::experiments
