// `sojourn experiment`, `sojourn calibrate`, `sojourn advise` and `sojourn trace`: the
// research harness (docs/experiments.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agents/cli/commands.hpp"
#include "agents/experiments/experiment.hpp"

namespace CLI {
class App;
}  // namespace CLI

namespace sojourn::cli {

struct AdviseCommand {
  std::string rtt = "0ms", bandwidth, request = "0B", reply = "0B", code = "0B", state = "256B", calibration;
  std::uint32_t interactions = 1;
  bool json = false;
  bool data_here = false;
};

struct ExperimentCommands {
  experiments::ExperimentOptions experiment;
  std::string calibrate_out;
  bool calibrate_quick = false;
  AdviseCommand advise;
  std::vector<std::string> merge_inputs;
  std::string merge_out, merge_agent, plot_trace, plot_agent, plot_out = "journey.png";
  CLI::App* experiment_cmd = nullptr;
  std::vector<CLI::App*> experiment_names;
  CLI::App* calibrate_cmd = nullptr;
  CLI::App* advise_cmd = nullptr;
  CLI::App* merge_cmd = nullptr;
  CLI::App* plot_cmd = nullptr;
};

void add_experiment_commands(CLI::App& app, ExperimentCommands& c, std::string version);
// Runs the one that was parsed; -1 when none was.
int run_experiment_commands(ExperimentCommands& c);

}  // namespace sojourn::cli
