// How much slower than nominal the code under test runs here: a factor for the wall-clock
// limits whose subject is something else (a memory bomb must end with memory_limit, not at a
// 5 s deadline that an emulated or starved CPU reaches first). Never for a limit the test is
// about: a deadline test keeps its deadline, so every assertion can still fail.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <thread>

namespace test_support {

// SOJOURN_TEST_TIME_SCALE when set (run_in_qemu.sh sets it in the nested guest, from the host's
// load: inside the guest the load average says nothing of the host's); else the host's
// one-minute load average per core. At least 1, at most 32.
inline double time_scale() {
  double scale = 1;
  if (const char* text = std::getenv("SOJOURN_TEST_TIME_SCALE"); text != nullptr && *text != '\0') {
    scale = std::strtod(text, nullptr);
  } else if (std::ifstream loadavg("/proc/loadavg"); loadavg) {
    double load = 0;
    loadavg >> load;
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    scale = load / cores;
  }
  if (!(scale >= 1)) scale = 1;  // also NaN
  return std::min(scale, 32.0);
}

// `ms` scaled by time_scale(), rounded up, within uint32.
inline std::uint32_t scaled_ms(std::uint32_t ms) {
  const double scaled = std::ceil(ms * time_scale());
  return scaled >= 4e9 ? 4'000'000'000u : static_cast<std::uint32_t>(scaled);
}

// An upper bound on a time whose floor the test sets (an emulated link's delays): the floor
// plus `slack_ms` for scheduling, the slack widened by time_scale(), but never past `broken_ms`,
// the least time the thing takes when it is broken (a delay paid twice): the check `t < bound`
// still fails then, however slow the host.
inline double slack_bound_ms(double floor_ms, double slack_ms, double broken_ms) {
  return std::min(floor_ms + slack_ms * time_scale(), broken_ms);
}

}  // namespace test_support
