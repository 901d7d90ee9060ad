// A hop's phases for bench_migration_cost, from the agent's own marks (a host call just before
// agent.go, one on the first line on the peer) and the two nodes' trace files: the same steps
// `sojourn experiment migration-cost` reads (docs/experiments.md), on the one steady clock
// the process's nodes share.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace sojourn::bench {

using Clock = std::chrono::steady_clock;

inline double micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

using Mark = std::pair<std::string, Clock::time_point>;  // "go" or "arrived", when

struct Marks {
  std::mutex mutex;
  std::vector<Mark> times;
};

// One hop: its marks, and the strong agent's host figures for it (from the itinerary).
struct HopWindow {
  Clock::time_point go, arrived;
  double image_us = 0;    // sealing the heap at the source
  double restore_us = 0;  // opening it into the destination guest's arena
};

// Each "go" mark followed by an "arrived" one.
std::vector<HopWindow> hop_windows(const std::vector<Mark>& marks);

struct TraceEvent {
  std::string kind;
  Clock::time_point at;
};

// The events of `agent` in the trace files, in time order (unreadable lines are skipped).
std::vector<TraceEvent> read_trace_events(const std::vector<std::string>& files, const std::string& agent);

// Medians over the hops, microseconds. serialize: the TRANSFER's encoding (serialize_start to
// serialize_end) plus the sealing; transfer: transfer_sent to transfer_received; restore:
// restore_start to restore_end plus the image's opening; first_line: restore_end to the first
// line's mark, less the opening; other: the hop less all of these.
struct PhaseMedians {
  bool traced = false;  // every hop had its events
  double image_us = 0, serialize_us = 0, transfer_us = 0, restore_us = 0, first_line_us = 0, other_us = 0;
};

PhaseMedians phase_medians(const std::vector<HopWindow>& hops, const std::vector<TraceEvent>& events);

}  // namespace sojourn::bench
