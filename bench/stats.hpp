// Latency summaries for the benchmarks: nearest-rank percentiles over samples in
// microseconds, so that a table row is median and p99 of exactly what was measured.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace sojourn::bench {

struct LatencySummary {
  std::size_t samples = 0;
  double median_us = 0;
  double p99_us = 0;
  double max_us = 0;
};

// Nearest-rank percentile (p in (0, 100]) of sorted samples; 0 when there are none.
inline double percentile_of_sorted(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

inline LatencySummary summarize(std::vector<double> samples_us) {
  std::sort(samples_us.begin(), samples_us.end());
  LatencySummary s;
  s.samples = samples_us.size();
  s.median_us = percentile_of_sorted(samples_us, 50);
  s.p99_us = percentile_of_sorted(samples_us, 99);
  s.max_us = samples_us.empty() ? 0 : samples_us.back();
  return s;
}

}  // namespace sojourn::bench
