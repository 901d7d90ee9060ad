// Internal (experiments): what every `sojourn experiment` shares: its options, the output
// directory (results.csv, trace.jsonl, meta.json, plot.gp and the PNG), progress on a
// terminal, and the calibration it predicts with. docs/experiments.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sojourn/agents/advise.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/transports/link_model.hpp"

namespace sojourn::experiments {

struct ExperimentOptions {
  std::string name;                // paradigms, itinerary, migration-cost
  std::string out;                 // the directory written
  std::string profile = "seed-wan";
  std::string links = "emulated";  // or netem
  bool quick = false;
  std::uint64_t seed = 1;
  std::string version;             // "sojourn 0.1.0 (commit ...)", for meta.json
  std::string calibration;         // a calibration file; empty: calibration_path(), else measured now
};

// Makes DIR (and DIR/nodes for the nodes' own traces).
Result<void> prepare_out_dir(const std::string& dir);
// What every experiment starts with: o.profile's links and a prepared o.out; on error it has
// printed the reason and the experiment returns 2 (usage).
std::optional<LinkProfile> open_experiment(const ExperimentOptions& o);
// --links netem: refused where the kernel has no sch_netem, with the reason; the emulated
// links otherwise (netem namespaces are not built yet: also refused, saying so).
Result<void> check_links_mode(const std::string& mode);
// The fixed costs the model uses: the calibration file when there is one, else measured now
// on loopback (a few seconds) and said so in meta.json.
FixedCosts fixed_costs_for(const ExperimentOptions& o);
// meta.json: commit, kernel, CPU, options, seed, time, the fixed costs and `extra` (a JSON object's members).
Result<void> write_meta(const ExperimentOptions& o, const FixedCosts& fixed, const std::string& extra_members);
// Runs `gnuplot SCRIPT` in DIR. Error when gnuplot is missing (Debian: gnuplot-nox) or fails.
Result<void> run_gnuplot(const std::string& dir, const std::string& script);
// DIR/trace.jsonl: the nodes' traces under DIR/nodes merged into one timeline.
Result<void> merge_node_traces(const std::string& dir);
// Writes text to DIR/NAME.
Result<void> write_file(const std::string& path, const std::string& text);

// "[12/40] cs N=10 on wa-virginia" on one line of a terminal; silent otherwise.
class Progress {
 public:
  explicit Progress(std::size_t total);
  void step(const std::string& what);
  void done();

 private:
  std::size_t total_, at_ = 0;
  bool tty_;
};

// Measures the fixed costs on loopback without an emulated link (`sojourn calibrate`).
Result<FixedCosts> calibrate(bool quick);

// The experiments; each returns the process exit code.
int run_paradigms(const ExperimentOptions& o);
int run_migration_cost(const ExperimentOptions& o);
int run_itinerary(const ExperimentOptions& o);

// The merge of `sojourn trace merge`: every line of every file, ordered by wall time, each
// given t_ms from the first event (and kept only when its agent is `agent`, if set).
Result<std::size_t> merge_traces(const std::vector<std::string>& inputs, const std::string& out, const std::string& agent = {});
// `sojourn trace plot`: an agent's journey (node against time) as a PNG, from a merged trace.
Result<void> plot_trace(const std::string& trace, const std::string& agent, const std::string& png);

}  // namespace sojourn::experiments
