// What every experiment shares (experiment.hpp): the output directory, meta.json, gnuplot,
// progress, the links mode and the calibration.
#include "agents/experiments/experiment.hpp"

#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace sojourn::experiments {

namespace fs = std::filesystem;

Result<void> write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc | std::ios::binary);
  if (!out) return errors::invalid_argument("cannot write '" + path + "': " + std::strerror(errno));
  out << text;
  if (!out) return errors::invalid_argument("cannot write '" + path + "'");
  return {};
}

Result<void> prepare_out_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(fs::path(dir) / "nodes", ec);
  if (ec) return errors::invalid_argument("cannot make the output directory '" + dir + "': " + ec.message());
  // The nodes append to their traces: a rerun into the same directory starts them afresh.
  for (const auto& entry : fs::directory_iterator(fs::path(dir) / "nodes", ec)) {
    if (entry.path().extension() == ".jsonl") fs::remove(entry.path(), ec);
  }
  return {};
}

std::optional<LinkProfile> open_experiment(const ExperimentOptions& o) {
  auto profile = find_link_profile(o.profile);
  if (!profile) {
    std::fprintf(stderr, "sojourn: error: %s\n", profile.error().message.c_str());
    return std::nullopt;
  }
  if (auto ok = prepare_out_dir(o.out); !ok) {
    std::fprintf(stderr, "sojourn: error: %s\n", ok.error().message.c_str());
    return std::nullopt;
  }
  return std::move(*profile);
}

Result<void> check_links_mode(const std::string& mode) {
  if (mode == "emulated") return {};
  if (mode != "netem") return errors::invalid_argument("unknown --links '" + mode + "' (emulated or netem)");
  utsname u{};
  uname(&u);
  const std::string release = u.release;
  bool have = fs::exists("/sys/module/sch_netem");
  std::ifstream builtin("/lib/modules/" + release + "/modules.builtin");
  for (std::string line; !have && std::getline(builtin, line);) have = line.find("sch_netem") != std::string::npos;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator("/lib/modules/" + release + "/kernel/net/sched", ec);
       !have && !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    have = it->path().filename().string().rfind("sch_netem", 0) == 0;
  }
  if (!have) {
    return errors::invalid_argument("--links netem needs the kernel's sch_netem qdisc, and kernel " + release +
                                    " has none (not loaded, not built in, no module): use the emulated links "
                                    "(--links emulated, the default)");
  }
  return errors::invalid_argument("--links netem is not built yet (this kernel has sch_netem, but the "
                                  "namespace-and-veth testbed is issue 14's remaining work): use --links emulated");
}

FixedCosts fixed_costs_for(const ExperimentOptions& o) {
  const std::string path = o.calibration.empty() ? calibration_path() : o.calibration;
  if (auto loaded = load_calibration(path)) return *loaded;
  auto measured = calibrate(true);
  if (measured) {
    measured->source = "measured at the start of this run (no calibration file at " + path + ")";
    return *measured;
  }
  // Said in meta.json and on stderr: the predictions then rest on round figures only.
  std::fprintf(stderr, "sojourn: warning: measuring the fixed costs failed (%s): the model uses built-in defaults\n",
               measured.error().message.c_str());
  FixedCosts defaults;
  defaults.source = "built-in defaults (no calibration file at " + path + ", and measuring failed: " +
                    measured.error().message + ")";
  return defaults;
}

namespace {

std::string first_line_of(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

}  // namespace

Result<void> write_meta(const ExperimentOptions& o, const FixedCosts& f, const std::string& extra_members) {
  utsname u{};
  uname(&u);
  std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  nlohmann::json j;
  j["experiment"] = o.name;
  j["version"] = o.version;
  j["kernel"] = std::string(u.sysname) + " " + u.release + " " + u.machine;
  j["cpu"] = first_line_of("/proc/cpuinfo", "model name");
  j["cpus"] = sysconf(_SC_NPROCESSORS_ONLN);
  j["time"] = when;
  j["seed"] = o.seed;
  j["options"] = {{"profile", o.profile}, {"quick", o.quick}, {"links", o.links}, {"seed", o.seed}, {"out", o.out}};
  j["fixed_costs"] = {{"call_ms", f.call_ms},   {"eval_ms", f.eval_ms},           {"fetch_ms", f.fetch_ms},
                      {"hop_ms", f.hop_ms},     {"local_call_ms", f.local_call_ms}, {"per_kb_ms", f.per_kb_ms},
                      {"state_per_kb_ms", f.state_per_kb_ms}, {"source", f.source}};
  if (!extra_members.empty()) {
    auto extra = nlohmann::json::parse("{" + extra_members + "}", nullptr, false);
    if (!extra.is_discarded()) j.update(extra);
  }
  return write_file(o.out + "/meta.json", j.dump(2) + "\n");
}

Result<void> run_gnuplot(const std::string& dir, const std::string& script) {
  pid_t pid = fork();
  if (pid < 0) return errors::invalid_argument(std::string("cannot start gnuplot: ") + std::strerror(errno));
  if (pid == 0) {
    if (chdir(dir.c_str()) != 0) _exit(126);
    execlp("gnuplot", "gnuplot", script.c_str(), static_cast<char*>(nullptr));
    _exit(errno == ENOENT ? 127 : 126);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    return errors::invalid_argument("gnuplot not found: install it (Debian: apt-get install gnuplot-nox), then "
                                    "redraw with: cd " + dir + " && gnuplot " + script);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return errors::invalid_argument("gnuplot " + script + " failed in " + dir);
  }
  return {};
}

Result<void> merge_node_traces(const std::string& dir) {
  std::vector<std::string> inputs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::path(dir) / "nodes", ec)) {
    if (entry.path().extension() == ".jsonl") inputs.push_back(entry.path().string());
  }
  std::sort(inputs.begin(), inputs.end());
  auto merged = merge_traces(inputs, dir + "/trace.jsonl");
  if (!merged) return merged.error();
  return {};
}

Progress::Progress(std::size_t total) : total_(total), tty_(isatty(STDERR_FILENO) == 1) {}

void Progress::step(const std::string& what) {
  ++at_;
  if (tty_) std::fprintf(stderr, "\r\033[K[%zu/%zu] %s", at_, total_, what.c_str());
}

void Progress::done() {
  if (tty_) std::fprintf(stderr, "\r\033[K");
}

}  // namespace sojourn::experiments
