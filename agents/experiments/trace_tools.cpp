// `sojourn trace merge` and `sojourn trace plot`: nodes' trace files (NodeOptions::trace) as
// one timeline, and an agent's journey drawn from it.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "agents/experiments/experiment.hpp"

namespace sojourn::experiments {

Result<std::size_t> merge_traces(const std::vector<std::string>& inputs, const std::string& out, const std::string& agent) {
  std::vector<nlohmann::json> events;
  for (const auto& path : inputs) {
    std::ifstream in(path);
    if (!in) return errors::invalid_argument("cannot read trace '" + path + "': " + std::strerror(errno));
    std::size_t number = 0;
    for (std::string line; std::getline(in, line);) {
      ++number;
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("unix_us") || !j["unix_us"].is_number_integer()) {
        return errors::invalid_argument("trace '" + path + "' line " + std::to_string(number) +
                                        " is not a trace event (a JSON object with unix_us)");
      }
      if (!agent.empty() && j.value("agent", "") != agent) continue;
      j["source"] = path.substr(path.find_last_of('/') + 1);
      events.push_back(std::move(j));
    }
  }
  // Wall time orders the nodes' events (their monotonic clocks are their own); within one node
  // its sequence numbers keep the order the node saw.
  std::stable_sort(events.begin(), events.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    auto ka = std::make_tuple(a["unix_us"].get<std::int64_t>(), a.value("source", ""), a.value("seq", 0));
    auto kb = std::make_tuple(b["unix_us"].get<std::int64_t>(), b.value("source", ""), b.value("seq", 0));
    return ka < kb;
  });
  std::ofstream o(out, std::ios::trunc);
  if (!o) return errors::invalid_argument("cannot write '" + out + "': " + std::strerror(errno));
  const std::int64_t t0 = events.empty() ? 0 : events.front()["unix_us"].get<std::int64_t>();
  for (auto& e : events) {
    e["t_ms"] = static_cast<double>(e["unix_us"].get<std::int64_t>() - t0) / 1000.0;
    o << e.dump() << "\n";
  }
  if (!o) return errors::invalid_argument("cannot write '" + out + "'");
  return events.size();
}

Result<void> plot_trace(const std::string& trace, const std::string& agent, const std::string& png) {
  std::ifstream in(trace);
  if (!in) return errors::invalid_argument("cannot read trace '" + trace + "': " + std::strerror(errno));
  std::vector<std::pair<double, std::string>> points;  // t_ms, node
  std::vector<std::string> kinds;
  std::int64_t t0 = -1;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("unix_us")) continue;
    if (!agent.empty() && j.value("agent", "") != agent) continue;
    if (agent.empty() && j.value("agent", "").empty()) continue;
    std::int64_t t = j["unix_us"].get<std::int64_t>();
    if (t0 < 0) t0 = t;
    points.emplace_back(static_cast<double>(t - t0) / 1000.0, j.value("node", "?"));
    kinds.push_back(j.value("kind", "?"));
  }
  if (points.empty()) {
    return errors::invalid_argument("no events of " + (agent.empty() ? std::string("any agent") : "agent " + agent) + " in '" + trace + "'");
  }
  std::map<std::string, int> rows;
  for (const auto& [t, node] : points) rows.emplace(node, 0);
  int next = 0;
  for (auto& [node, row] : rows) row = next++;
  std::string dir = png.find('/') == std::string::npos ? "." : png.substr(0, png.find_last_of('/'));
  std::string base = png.substr(png.find_last_of('/') + 1);
  std::string stem = base.substr(0, base.rfind('.'));
  std::ostringstream data;
  for (std::size_t i = 0; i < points.size(); ++i) {
    data << points[i].first << " " << rows[points[i].second] << " " << kinds[i] << "\n";
  }
  if (auto w = write_file(dir + "/" + stem + ".dat", data.str()); !w) return w.error();
  std::ostringstream gp;
  gp << "# Redraws " << base << ": gnuplot " << stem << ".gp (written by sojourn trace plot)\n"
     << "set terminal pngcairo size 900," << 160 + 60 * rows.size() << " font 'sans,9'\nset output '" << base << "'\n"
     << "set title \"" << (agent.empty() ? std::string("agents' journeys") : "agent " + agent) << "\"\n"
     << "set xlabel 'time (ms)'\nset ytics (";
  bool first = true;
  for (const auto& [node, row] : rows) {
    gp << (first ? "" : ", ") << "'" << node << "' " << row;
    first = false;
  }
  gp << ")\nset yrange [-0.5:" << rows.size() - 0.5 << "]\nset grid\n"
     << "plot '" << stem << ".dat' using 1:2 with linespoints pt 7 notitle, '' using 1:2:3 with labels offset 0,1 font ',7' notitle\n";
  if (auto w = write_file(dir + "/" + stem + ".gp", gp.str()); !w) return w.error();
  return run_gnuplot(dir, stem + ".gp");
}

}  // namespace sojourn::experiments
