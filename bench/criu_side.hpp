// CRIU beside the strong hop in bench_migration_cost: runs bench/run_criu.sh on a process
// holding the same LuaJIT heap (bench_criu_holder) and prints its dump and restore beside the
// hop's figures, or the exact reason CRIU cannot run here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sojourn::bench {

// What the strong rows measured for one size (medians, microseconds).
struct StrongFigures {
  int kb = 0;
  std::string refused;
  double hop_us = 0;  // the hop's median
  std::uint64_t raw_bytes = 0, wire_bytes = 0;
};

// Prints the side-by-side table; returns 0, or 1 when the script could not be run at all.
int print_criu_side_by_side(const std::vector<StrongFigures>& strong, int rounds);

}  // namespace sojourn::bench
