// Internal: the node's metrics (counters, gauges and histograms with labels, rendered in the
// Prometheus text exposition format 0.0.4) and its trace (a bounded ring of recent events with
// sequence numbers). Standard library only: node_stats.hpp includes it everywhere the node
// counts something. docs/observability.md lists every metric.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace sojourn::metrics {

using LabelValues = std::vector<std::string>;

// One metric family: a name, its help text, its type and the names of its labels. Series are
// made on first use and never removed (label values come from small fixed sets: services,
// error codes, isolation levels), so a reference to one stays valid for the family's life.
class Family {
 public:
  Family(std::string name, std::string help, std::vector<std::string> labels);
  virtual ~Family() = default;
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;
  const std::string& name() const { return name_; }
  // Appends "# HELP", "# TYPE" and every series.
  void render(std::string& out) const;

 protected:
  virtual const char* type() const = 0;
  virtual void render_series(std::string& out) const = 0;
  // `name{a="x",b="y"}` (extra: one more label already formatted, e.g. le="0.5").
  std::string series_name(std::string_view suffix, const LabelValues& values, std::string_view extra = {}) const;

  std::string name_, help_;
  std::vector<std::string> labels_;
  mutable std::mutex mutex_;  // guards the maps of series, never a value
};

class CounterFamily final : public Family {
 public:
  using Family::Family;
  // The series of these label values (as many as the family has labels); cheap to keep.
  std::atomic<std::uint64_t>& at(const LabelValues& values);
  void inc(const LabelValues& values, std::uint64_t by = 1) { at(values).fetch_add(by, std::memory_order_relaxed); }
  std::uint64_t value(const LabelValues& values) const;

 private:
  const char* type() const override { return "counter"; }
  void render_series(std::string& out) const override;
  std::map<LabelValues, std::unique_ptr<std::atomic<std::uint64_t>>> series_;
};

class GaugeFamily final : public Family {
 public:
  using Family::Family;
  void set(const LabelValues& values, double v);
  double value(const LabelValues& values) const;

 private:
  const char* type() const override { return "gauge"; }
  void render_series(std::string& out) const override;
  std::map<LabelValues, double> series_;
};

// Latencies in seconds, with fixed buckets from 100 µs to 10 s.
class HistogramFamily final : public Family {
 public:
  static constexpr std::array<double, 15> kBounds{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                  0.05,   0.1,     0.25,   0.5,   1,      2.5,   10};
  struct Series {
    std::array<std::atomic<std::uint64_t>, kBounds.size()> buckets{};  // not cumulative
    std::atomic<std::uint64_t> count{0};
    std::atomic<std::uint64_t> sum_ns{0};
  };
  using Family::Family;
  Series& at(const LabelValues& values);
  void observe(const LabelValues& values, std::chrono::nanoseconds took) { observe(at(values), took); }
  static void observe(Series& s, std::chrono::nanoseconds took);
  // Count and the quantile q (0..1) estimated from the buckets (their upper bound), over every series.
  std::uint64_t count() const;
  double quantile(double q) const;

 private:
  const char* type() const override { return "histogram"; }
  void render_series(std::string& out) const override;
  std::map<LabelValues, std::unique_ptr<Series>> series_;
};

// "0.25", "3", "+Inf": a sample value as the exposition format writes it.
std::string format_value(double v);
// A label value with \, " and newline escaped.
std::string escape_label(std::string_view v);

// One event of the trace.
struct Event {
  std::uint64_t seq = 0;
  std::int64_t unix_ms = 0;
  std::string kind;   // request, eval, arrival, departure, end, error
  std::string agent;  // the agent's id, when about one
  std::string peer;   // the other node or the caller
  std::string detail;
};

// One event as a JSON line of a trace file (docs/experiments.md, "Traces"): the node, a
// monotonic (steady clock, ns) and a wall (Unix, µs) timestamp, and the event's fields.
std::string trace_line(std::string_view node, std::int64_t mono_ns, std::int64_t unix_us, const Event& e);

// The most recent events (the last `capacity` of them), bounded; sequence numbers start at 1
// and never repeat. The events live in a fixed ring whose slots are reused: once the ring has
// filled, adding an event assigns into the strings of the oldest slot, so an event whose
// fields fit the capacity its slot already has allocates nothing. An event equal to the one
// before it in every field but its sequence number (a client's pipelined requests in the same
// millisecond: same kind, peer and service) only extends the newest slot's run of sequence
// numbers; since() gives each event of a run, as if each had its own slot.
class TraceRing {
 public:
  explicit TraceRing(std::size_t capacity = 2048) : capacity_(capacity) {}
  ~TraceRing();
  void add(std::string_view kind, std::string_view agent, std::string_view peer, std::string_view detail);
  // The same for an event that happened earlier, at `wall` and `mono` (a TRANSFER's receipt,
  // known to be one only once decoded). Its sequence number is the next one.
  void add_at(std::chrono::system_clock::time_point wall, std::chrono::steady_clock::time_point mono,
              std::string_view kind, std::string_view agent, std::string_view peer, std::string_view detail);
  // Also appends every event to `path` as JSON lines (NodeOptions::trace); empty when that
  // worked, else why not. Without a file an event costs what it did before (one null test).
  std::string open_file(const std::string& path, std::string node);
  const std::string& file_error() const { return file_error_; }
  bool has_file() const { return file_ != nullptr; }  // set before the node serves, never after
  // The events with seq > since (at most `limit`, the oldest first), and the last seq given.
  std::vector<Event> since(std::uint64_t since, std::size_t limit = 500) const;
  std::uint64_t last_seq() const;

 private:
  // Under mutex_: fills the next slot and, with a file, writes its line.
  void put(std::chrono::system_clock::duration wall, std::chrono::steady_clock::duration mono, std::string_view kind,
           std::string_view agent, std::string_view peer, std::string_view detail);

  // A run of equal events: `event` holds the first one's seq, `last` the run's last seq.
  struct Slot {
    Event event;
    std::uint64_t last = 0;
  };

  // Under mutex_: a new run in `s`, and the file's line.
  void put_fields(Slot& s, std::uint64_t seq, std::int64_t unix_ms, std::chrono::system_clock::duration wall,
                  std::chrono::steady_clock::duration mono, std::string_view kind, std::string_view agent,
                  std::string_view peer, std::string_view detail);

  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::vector<Slot> ring_;  // grows to capacity_, then reused oldest first
  std::size_t newest_ = 0;  // the slot of the newest run (when ring_ is not empty)
  std::uint64_t next_seq_ = 1;
  std::FILE* file_ = nullptr;  // the trace file, written under mutex_, line-buffered
  std::string file_node_, file_error_;
  std::string line_;  // the file's line being written, reused
};

}  // namespace sojourn::metrics
