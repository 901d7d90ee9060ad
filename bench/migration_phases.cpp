// Phases of bench_migration_cost's hops from the marks and the nodes' trace files.
#include "bench/migration_phases.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "bench/stats.hpp"

namespace sojourn::bench {

std::vector<HopWindow> hop_windows(const std::vector<Mark>& marks) {
  std::vector<HopWindow> out;
  for (std::size_t i = 1; i < marks.size(); ++i) {
    if (marks[i].first == "arrived" && marks[i - 1].first == "go") out.push_back({marks[i - 1].second, marks[i].second});
  }
  return out;
}

std::vector<TraceEvent> read_trace_events(const std::vector<std::string>& files, const std::string& agent) {
  std::vector<TraceEvent> out;
  const std::string want_agent = "\"agent\":\"" + agent + "\"";
  for (const std::string& path : files) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      if (line.find(want_agent) == std::string::npos) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("mono_ns") || !j["mono_ns"].is_number_integer() || !j.contains("kind") ||
          !j["kind"].is_string()) {
        continue;
      }
      out.push_back({j["kind"].get<std::string>(), Clock::time_point(std::chrono::nanoseconds(j["mono_ns"].get<std::int64_t>()))});
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const TraceEvent& a, const TraceEvent& b) { return a.at < b.at; });
  return out;
}

PhaseMedians phase_medians(const std::vector<HopWindow>& hops, const std::vector<TraceEvent>& events) {
  std::vector<double> image, serialize, transfer, restore, first_line, other;
  for (const HopWindow& h : hops) {
    // The first event of each kind inside the hop.
    std::map<std::string, Clock::time_point> at;
    for (const TraceEvent& e : events) {
      if (e.at >= h.go && e.at <= h.arrived) at.emplace(e.kind, e.at);
    }
    const char* needed[] = {"serialize_start", "serialize_end", "transfer_sent", "transfer_received", "restore_start", "restore_end"};
    if (!std::all_of(std::begin(needed), std::end(needed), [&](const char* k) { return at.count(k) != 0; })) return {};
    const double ser = micros(at["serialize_end"] - at["serialize_start"]) + h.image_us;
    const double xfer = micros(at["transfer_received"] - at["transfer_sent"]);
    const double rest = micros(at["restore_end"] - at["restore_start"]) + h.restore_us;
    const double first = micros(h.arrived - at["restore_end"]) - h.restore_us;
    image.push_back(h.image_us);
    serialize.push_back(ser);
    transfer.push_back(xfer);
    restore.push_back(rest);
    first_line.push_back(first);
    other.push_back(micros(h.arrived - h.go) - ser - xfer - rest - first);
  }
  if (hops.empty()) return {};
  PhaseMedians m;
  m.traced = true;
  m.image_us = summarize(image).median_us;
  m.serialize_us = summarize(serialize).median_us;
  m.transfer_us = summarize(transfer).median_us;
  m.restore_us = summarize(restore).median_us;
  m.first_line_us = summarize(first_line).median_us;
  m.other_us = summarize(other).median_us;
  return m;
}

}  // namespace sojourn::bench
