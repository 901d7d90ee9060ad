// The research harness's subcommands (experiment_commands.hpp).
#include "agents/cli/experiment_commands.hpp"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "sojourn/agents/advise.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/transports/link_model.hpp"

namespace sojourn::cli {

namespace {

int usage_error(const Error& e) {
  std::fprintf(stderr, "sojourn: error: %s\n", e.message.c_str());
  return exit_usage;
}

int run_advise(const AdviseCommand& a) {
  Workload w;
  auto rtt = parse_duration(a.rtt);
  if (!rtt) return usage_error(rtt.error());
  w.rtt_ms = static_cast<double>(rtt->count()) / 1000.0;
  if (!a.bandwidth.empty()) {
    auto bw = parse_bandwidth(a.bandwidth);
    if (!bw) return usage_error(bw.error());
    w.bandwidth_bps = *bw;
  }
  w.interactions = a.interactions;
  w.data_here = a.data_here;
  for (auto [text, field] : {std::pair{&a.request, &w.request_bytes}, std::pair{&a.reply, &w.reply_bytes},
                             std::pair{&a.code, &w.code_bytes}, std::pair{&a.state, &w.state_bytes}}) {
    auto size = parse_size(*text);
    if (!size) return usage_error(size.error());
    *field = *size;
  }
  FixedCosts fixed;
  const std::string path = a.calibration.empty() ? calibration_path() : a.calibration;
  if (auto loaded = load_calibration(path)) {
    fixed = *loaded;
  } else if (!a.calibration.empty()) {
    return usage_error(loaded.error());
  }
  Advice advice = advise(w, fixed);
  if (a.json) {
    std::printf("{\"choice\": \"%s\", \"why\": \"%s\", \"fixed_costs\": \"%s\", \"predicted_ms\": {",
                std::string(paradigm_name(advice.choice)).c_str(), advice.why.c_str(), fixed.source.c_str());
    for (std::size_t i = 0; i < advice.costs.size(); ++i) {
      std::printf("%s\"%s\": %.3f", i ? ", " : "", std::string(paradigm_name(advice.costs[i].paradigm)).c_str(),
                  advice.costs[i].predicted_ms);
    }
    std::printf("}}\n");
    return exit_ok;
  }
  std::printf("%-4s %-18s %12s %12s %14s\n", "way", "", "predicted_ms", "round_trips", "bytes_on_link");
  for (const auto& c : advice.costs) {
    std::printf("%-4s %-18s %12.2f %12.0f %14.0f%s\n", std::string(paradigm_name(c.paradigm)).c_str(),
                std::string(paradigm_title(c.paradigm)).c_str(), c.predicted_ms, c.round_trips, c.bytes,
                c.paradigm == advice.choice                  ? "  <- use"
                : c.paradigm == Paradigm::cod && !a.data_here ? "  (the data is at the peer: --data-here)"
                                                               : "");
  }
  std::printf("choice: %s (%s)\nfixed costs: %s\n", std::string(paradigm_name(advice.choice)).c_str(), advice.why.c_str(),
              fixed.source.c_str());
  return exit_ok;
}

int run_calibrate(const std::string& out, bool quick) {
  const std::string path = out.empty() ? calibration_path() : out;
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  auto f = experiments::calibrate(quick);
  if (!f) {
    std::fprintf(stderr, "sojourn: error: %s\n", f.error().message.c_str());
    return exit_internal;
  }
  if (auto saved = save_calibration(path, *f); !saved) return usage_error(saved.error());
  std::printf("call %.3f ms, eval %.3f ms, fetch %.3f ms, hop %.3f ms, local call %.4f ms, per KB %.4f ms, "
              "per KB of agent state %.4f ms\n%s; stored in %s\n",
              f->call_ms, f->eval_ms, f->fetch_ms, f->hop_ms, f->local_call_ms, f->per_kb_ms, f->state_per_kb_ms,
              f->source.c_str(), path.c_str());
  return exit_ok;
}

}  // namespace

void add_experiment_commands(CLI::App& app, ExperimentCommands& c, std::string version) {
  c.experiment.version = std::move(version);
  c.experiment_cmd = app.add_subcommand("experiment", "Run a research experiment: CSV, trace, meta.json and a plot in --out");
  c.experiment_cmd->require_subcommand(1);
  auto* paradigms = c.experiment_cmd->add_subcommand(
      "paradigms", "The same task as client-server, remote evaluation, code-on-demand and mobile agent, over a link profile");
  c.experiment_names.push_back(paradigms);
  c.experiment_names.push_back(c.experiment_cmd->add_subcommand(
      "migration-cost", "A weak agent's hop and downtime as its state grows from 1 KB to 64 MB, over several bandwidths"));
  c.experiment_names.push_back(c.experiment_cmd->add_subcommand(
      "itinerary", "One agent visiting K data nodes vs client-server to each vs K remote evaluations, sweeping K and the data"));
  for (CLI::App* e : c.experiment_names) {
    e->add_option("--out", c.experiment.out, "Directory for results.csv, trace.jsonl, meta.json, plot.gp and the PNG")->required();
    e->add_option("--profile", c.experiment.profile, "Link profile: seed-wan, lan, wifi, 3g")->capture_default_str();
    e->add_flag("--quick", c.experiment.quick, "A short sweep (well under a minute), for CI");
    e->add_option("--seed", c.experiment.seed, "Seed of the emulated links")->capture_default_str();
    e->add_option("--links", c.experiment.links, "emulated (in the transport, the default) or netem (kernel qdisc)")
        ->capture_default_str();
    e->add_option("--calibration", c.experiment.calibration, "Fixed costs file (default: sojourn calibrate's)");
  }

  c.calibrate_cmd = app.add_subcommand("calibrate", "Measure this host's fixed costs for the cost model and store them");
  c.calibrate_cmd->add_option("--out", c.calibrate_out, "Where to store them (default: " + calibration_path() + ")");
  c.calibrate_cmd->add_flag("--quick", c.calibrate_quick, "Fewer repetitions");

  c.advise_cmd = app.add_subcommand("advise", "Predict each paradigm's cost for a task and link, and say which to use");
  AdviseCommand& a = c.advise;
  c.advise_cmd->add_option("--rtt", a.rtt, "Round trip of the link, e.g. 81.6ms")->required();
  c.advise_cmd->add_option("--bandwidth", a.bandwidth, "Bandwidth, e.g. 100mbit (default: unlimited)");
  c.advise_cmd->add_option("--interactions", a.interactions, "Requests the task makes")->capture_default_str();
  c.advise_cmd->add_option("--request", a.request, "Bytes of one request, e.g. 200B")->capture_default_str();
  c.advise_cmd->add_option("--reply", a.reply, "Bytes of one reply, e.g. 64KB")->capture_default_str();
  c.advise_cmd->add_option("--code", a.code, "Bytes of the code, e.g. 2KB")->capture_default_str();
  c.advise_cmd->add_option("--state", a.state, "Bytes of a mobile agent's state")->capture_default_str();
  c.advise_cmd->add_option("--calibration", a.calibration, "Fixed costs file (default: sojourn calibrate's, else built-in)");
  c.advise_cmd->add_flag("--data-here", a.data_here, "The data is here and the code at the peer: code-on-demand applies");
  c.advise_cmd->add_flag("--json", a.json, "Print machine-readable JSON");

  auto* trace = app.add_subcommand("trace", "Work with node traces (sojourn node --trace FILE)");
  trace->require_subcommand(1);
  c.merge_cmd = trace->add_subcommand("merge", "Merge nodes' traces into one timeline ordered by wall time");
  c.merge_cmd->add_option("inputs", c.merge_inputs, "Trace files (JSON lines)")->required();
  c.merge_cmd->add_option("--out", c.merge_out, "The merged timeline")->required();
  c.merge_cmd->add_option("--agent", c.merge_agent, "Keep only this agent's events");
  c.plot_cmd = trace->add_subcommand("plot", "Draw agents' journeys (node against time) from a trace as PNG");
  c.plot_cmd->add_option("trace", c.plot_trace, "A (merged) trace")->required();
  c.plot_cmd->add_option("--agent", c.plot_agent, "The agent (default: every agent's events)");
  c.plot_cmd->add_option("--out", c.plot_out, "The PNG (its .gp script and .dat beside it)")->capture_default_str();
}

int run_experiment_commands(ExperimentCommands& c) {
  if (c.experiment_cmd->parsed() || c.calibrate_cmd->parsed()) {
    // The in-process nodes' plain-TCP-on-loopback warnings are expected here, not news.
    if (!std::getenv("SOJOURN_LOG") && log_level() == LogLevel::warn) set_log_level(LogLevel::error);
  }
  if (c.experiment_cmd->parsed()) {
    if (auto mode = experiments::check_links_mode(c.experiment.links); !mode) return usage_error(mode.error());
    for (CLI::App* e : c.experiment_names) {
      if (!e->parsed()) continue;
      c.experiment.name = e->get_name();
      if (c.experiment.name == "paradigms") return experiments::run_paradigms(c.experiment);
      if (c.experiment.name == "migration-cost") return experiments::run_migration_cost(c.experiment);
      if (c.experiment.name == "itinerary") return experiments::run_itinerary(c.experiment);
    }
    return exit_usage;
  }
  if (c.calibrate_cmd->parsed()) return run_calibrate(c.calibrate_out, c.calibrate_quick);
  if (c.advise_cmd->parsed()) return run_advise(c.advise);
  if (c.merge_cmd->parsed()) {
    auto n = experiments::merge_traces(c.merge_inputs, c.merge_out, c.merge_agent);
    if (!n) return usage_error(n.error());
    std::printf("merged %zu events from %zu traces into %s\n", *n, c.merge_inputs.size(), c.merge_out.c_str());
    return exit_ok;
  }
  if (c.plot_cmd->parsed()) {
    if (auto p = experiments::plot_trace(c.plot_trace, c.plot_agent, c.plot_out); !p) return usage_error(p.error());
    std::printf("wrote %s\n", c.plot_out.c_str());
    return exit_ok;
  }
  return -1;
}

}  // namespace sojourn::cli
