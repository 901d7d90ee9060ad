// The node's metrics and trace (metrics.hpp).
#include "agents/metrics.hpp"

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace sojourn::metrics {

std::string escape_label(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

namespace {

// HELP text escapes only backslash and newline.
std::string escape_help(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

}  // namespace

std::string format_value(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
  return ec == std::errc() ? std::string(buf, end) : std::string("0");
}

Family::Family(std::string name, std::string help, std::vector<std::string> labels)
    : name_(std::move(name)), help_(std::move(help)), labels_(std::move(labels)) {}

void Family::render(std::string& out) const {
  out += "# HELP " + name_ + " " + escape_help(help_) + "\n";
  out += "# TYPE " + name_ + " " + type() + "\n";
  render_series(out);
}

std::string Family::series_name(std::string_view suffix, const LabelValues& values, std::string_view extra) const {
  std::string s = name_;
  s += suffix;
  if (labels_.empty() && extra.empty()) return s;
  s += '{';
  for (std::size_t i = 0; i < labels_.size() && i < values.size(); ++i) {
    if (i != 0) s += ',';
    s += labels_[i] + "=\"" + escape_label(values[i]) + "\"";
  }
  if (!extra.empty()) {
    if (!labels_.empty()) s += ',';
    s += extra;
  }
  s += '}';
  return s;
}

std::atomic<std::uint64_t>& CounterFamily::at(const LabelValues& values) {
  std::lock_guard lock(mutex_);
  auto& slot = series_[values];
  if (!slot) slot = std::make_unique<std::atomic<std::uint64_t>>(0);
  return *slot;
}

std::uint64_t CounterFamily::value(const LabelValues& values) const {
  std::lock_guard lock(mutex_);
  auto it = series_.find(values);
  return it == series_.end() ? 0 : it->second->load();
}

void CounterFamily::render_series(std::string& out) const {
  std::lock_guard lock(mutex_);
  if (series_.empty() && labels_.empty()) out += name_ + " 0\n";
  for (const auto& [values, v] : series_) out += series_name("", values) + " " + std::to_string(v->load()) + "\n";
}

void GaugeFamily::set(const LabelValues& values, double v) {
  std::lock_guard lock(mutex_);
  series_[values] = v;
}

double GaugeFamily::value(const LabelValues& values) const {
  std::lock_guard lock(mutex_);
  auto it = series_.find(values);
  return it == series_.end() ? 0 : it->second;
}

void GaugeFamily::render_series(std::string& out) const {
  std::lock_guard lock(mutex_);
  if (series_.empty() && labels_.empty()) out += name_ + " 0\n";
  for (const auto& [values, v] : series_) out += series_name("", values) + " " + format_value(v) + "\n";
}

HistogramFamily::Series& HistogramFamily::at(const LabelValues& values) {
  std::lock_guard lock(mutex_);
  auto& slot = series_[values];
  if (!slot) slot = std::make_unique<Series>();
  return *slot;
}

void HistogramFamily::observe(Series& s, std::chrono::nanoseconds took) {
  const double seconds = std::chrono::duration<double>(took).count();
  auto it = std::lower_bound(kBounds.begin(), kBounds.end(), seconds);  // le: the first bound >= v
  if (it != kBounds.end()) s.buckets[static_cast<std::size_t>(it - kBounds.begin())].fetch_add(1, std::memory_order_relaxed);
  s.count.fetch_add(1, std::memory_order_relaxed);
  s.sum_ns.fetch_add(static_cast<std::uint64_t>(std::max<std::int64_t>(0, took.count())), std::memory_order_relaxed);
}

std::uint64_t HistogramFamily::count() const {
  std::lock_guard lock(mutex_);
  std::uint64_t n = 0;
  for (const auto& [values, s] : series_) n += s->count.load();
  return n;
}

double HistogramFamily::quantile(double q) const {
  std::array<std::uint64_t, kBounds.size()> sums{};
  std::uint64_t total = 0;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [values, s] : series_) {
      for (std::size_t i = 0; i < kBounds.size(); ++i) sums[i] += s->buckets[i].load();
      total += s->count.load();
    }
  }
  if (total == 0) return 0;
  const double rank = q * static_cast<double>(total);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    seen += sums[i];
    if (static_cast<double>(seen) >= rank) return kBounds[i];
  }
  return std::numeric_limits<double>::infinity();  // above the last bound
}

void HistogramFamily::render_series(std::string& out) const {
  std::lock_guard lock(mutex_);
  for (const auto& [values, s] : series_) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < kBounds.size(); ++i) {
      cumulative += s->buckets[i].load();
      out += series_name("_bucket", values, "le=\"" + format_value(kBounds[i]) + "\"") + " " +
             std::to_string(cumulative) + "\n";
    }
    const std::uint64_t count = s->count.load();
    out += series_name("_bucket", values, "le=\"+Inf\"") + " " + std::to_string(count) + "\n";
    out += series_name("_sum", values) + " " + format_value(static_cast<double>(s->sum_ns.load()) / 1e9) + "\n";
    out += series_name("_count", values) + " " + std::to_string(count) + "\n";
  }
}

namespace {

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

}  // namespace

std::string trace_line(std::string_view node, std::int64_t mono_ns, std::int64_t unix_us, const Event& e) {
  std::string line = "{\"node\":";
  append_json_string(line, node);
  line += ",\"mono_ns\":" + std::to_string(mono_ns) + ",\"unix_us\":" + std::to_string(unix_us) +
          ",\"seq\":" + std::to_string(e.seq) + ",\"kind\":";
  append_json_string(line, e.kind);
  line += ",\"agent\":";
  append_json_string(line, e.agent);
  line += ",\"peer\":";
  append_json_string(line, e.peer);
  line += ",\"detail\":";
  append_json_string(line, e.detail);
  line += "}\n";
  return line;
}

TraceRing::~TraceRing() {
  if (file_) std::fclose(file_);
}

std::string TraceRing::open_file(const std::string& path, std::string node) {
  std::lock_guard lock(mutex_);
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (!f) {
    file_error_ = "cannot open trace file '" + path + "': " + std::strerror(errno);
    return file_error_;
  }
  if (file_) std::fclose(file_);
  file_ = f;
  file_node_ = std::move(node);
  return {};
}

void TraceRing::add(std::string_view kind, std::string_view agent, std::string_view peer, std::string_view detail) {
  const auto wall = std::chrono::system_clock::now().time_since_epoch();
  std::lock_guard lock(mutex_);
  // The monotonic clock is read only for the file's line.
  const auto mono = file_ ? std::chrono::steady_clock::now().time_since_epoch() : std::chrono::steady_clock::duration{};
  put(wall, mono, kind, agent, peer, detail);
}

void TraceRing::add_at(std::chrono::system_clock::time_point wall_at, std::chrono::steady_clock::time_point mono_at,
                       std::string_view kind, std::string_view agent, std::string_view peer, std::string_view detail) {
  std::lock_guard lock(mutex_);
  put(wall_at.time_since_epoch(), mono_at.time_since_epoch(), kind, agent, peer, detail);
}

void TraceRing::put(std::chrono::system_clock::duration wall, std::chrono::steady_clock::duration mono,
                    std::string_view kind, std::string_view agent, std::string_view peer, std::string_view detail) {
  const std::uint64_t seq = next_seq_++;
  const std::int64_t unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(wall).count();
  const auto same = [](const std::string& have, std::string_view v) {
    return have.size() == v.size() && std::memcmp(have.data(), v.data(), v.size()) == 0;
  };
  if (!file_ && !ring_.empty()) {
    // The same event again (a pipelining client's next request, say): the newest run grows,
    // a few compares instead of a slot's fields rewritten. With a file each event has its own
    // line (its monotonic time), so nothing is merged then.
    Slot& last = ring_[newest_];
    if (last.event.unix_ms == unix_ms && last.last + 1 == seq && same(last.event.detail, detail) &&
        same(last.event.peer, peer) && same(last.event.kind, kind) && same(last.event.agent, agent)) {
      last.last = seq;
      return;
    }
  }
  if (capacity_ == 0) {  // a ring of no capacity keeps nothing, but a file still gets the line
    if (!file_) return;
    Slot scratch;
    put_fields(scratch, seq, unix_ms, wall, mono, kind, agent, peer, detail);
    return;
  }
  if (ring_.size() < capacity_) {
    ring_.emplace_back();
    newest_ = ring_.size() - 1;
  } else {
    newest_ = newest_ + 1 == capacity_ ? 0 : newest_ + 1;
  }
  put_fields(ring_[newest_], seq, unix_ms, wall, mono, kind, agent, peer, detail);
}

void TraceRing::put_fields(Slot& s, std::uint64_t seq, std::int64_t unix_ms, std::chrono::system_clock::duration wall,
                           std::chrono::steady_clock::duration mono, std::string_view kind, std::string_view agent,
                           std::string_view peer, std::string_view detail) {
  Event* e = &s.event;
  e->seq = seq;
  s.last = seq;
  e->unix_ms = unix_ms;
  // assign, not a new string: a slot's strings keep their capacity from one lap to the next.
  // A client's requests mostly repeat (the same kind, peer and service lap after lap): a
  // field equal to what its slot holds is left as it is, a short compare instead of a copy.
  const auto keep_or_assign = [](std::string& to, std::string_view from) {
    if (std::string_view(to) != from) to.assign(from);
  };
  keep_or_assign(e->kind, kind);
  keep_or_assign(e->agent, agent);
  keep_or_assign(e->peer, peer);
  keep_or_assign(e->detail, detail);
  if (file_) {
    line_ = trace_line(file_node_, std::chrono::duration_cast<std::chrono::nanoseconds>(mono).count(),
                       std::chrono::duration_cast<std::chrono::microseconds>(wall).count(), *e);
    std::fwrite(line_.data(), 1, line_.size(), file_);
    std::fflush(file_);
  }
}

std::vector<Event> TraceRing::since(std::uint64_t since, std::size_t limit) const {
  std::lock_guard lock(mutex_);
  std::vector<Event> out;
  const std::uint64_t last = next_seq_ - 1;
  if (since >= last || ring_.empty() || limit == 0) return out;
  // The ring holds at least the last capacity_ events (runs hold several); give no more
  // than those, as a ring of one event a slot would.
  std::uint64_t seq = since + 1;
  if (last >= capacity_ && seq < last - capacity_ + 1) seq = last - capacity_ + 1;
  // The oldest run that still holds seq or a later one: walk back from the newest run.
  const std::size_t n = ring_.size();
  std::size_t at = newest_;
  for (std::size_t k = 1; k < n; ++k) {
    const std::size_t prev = at == 0 ? n - 1 : at - 1;
    if (ring_[prev].last < seq) break;
    at = prev;
  }
  if (ring_[at].event.seq > seq) seq = ring_[at].event.seq;  // older ones are gone
  out.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(last - seq + 1, limit)));
  while (out.size() < limit) {
    const Slot& s = ring_[at];
    for (; seq <= s.last && out.size() < limit; ++seq) {
      out.push_back(s.event);
      out.back().seq = seq;
    }
    if (at == newest_) break;
    at = at + 1 == n ? 0 : at + 1;
    seq = ring_[at].event.seq;
  }
  return out;
}

std::uint64_t TraceRing::last_seq() const {
  std::lock_guard lock(mutex_);
  return next_seq_ - 1;
}

}  // namespace sojourn::metrics
