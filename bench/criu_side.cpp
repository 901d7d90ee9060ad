// CRIU's dump and restore of the same heap, beside the strong hop (criu_side.hpp).
#include "bench/criu_side.hpp"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

#include "bench/stats.hpp"

namespace sojourn::bench {
namespace {

struct CriuRound {
  bool ok = false;
  double dump_ms = 0, zstd_ms = 0, restore_ms = 0, running_ms = 0;
  std::uint64_t image_bytes = 0, zstd_bytes = 0;
  std::string reason;
};

// "criu,KB,ok,DUMP_MS,IMAGE_BYTES,ZSTD_BYTES,ZSTD_MS,RESTORE_MS,RUNNING_MS," or
// "criu,KB,refused,,,,,,,REASON" (the reason may hold commas: it is the rest of the line).
bool parse_line(const std::string& line, int& kb, CriuRound& r) {
  if (line.rfind("criu,", 0) != 0) return false;
  std::vector<std::string> f;
  std::size_t at = 0;
  for (int i = 0; i < 9; ++i) {
    std::size_t comma = line.find(',', at);
    if (comma == std::string::npos) return false;
    f.push_back(line.substr(at, comma - at));
    at = comma + 1;
  }
  f.push_back(line.substr(at));
  kb = std::atoi(f[1].c_str());
  r.ok = f[2] == "ok";
  if (!r.ok) {
    r.reason = f[9];
    return true;
  }
  r.dump_ms = std::atof(f[3].c_str());
  r.image_bytes = std::strtoull(f[4].c_str(), nullptr, 10);
  r.zstd_bytes = std::strtoull(f[5].c_str(), nullptr, 10);
  r.zstd_ms = std::atof(f[6].c_str());
  r.restore_ms = std::atof(f[7].c_str());
  r.running_ms = std::atof(f[8].c_str());
  return true;
}

double median_ms(std::vector<double> v) { return summarize(std::move(v)).median_us; }  // summarize is unit-blind

std::string size_name(int kb) { return kb >= 1024 ? std::to_string(kb / 1024) + " MB" : std::to_string(kb) + " KB"; }

}  // namespace

int print_criu_side_by_side(const std::vector<StrongFigures>& strong, int rounds) {
  // Appended piece by piece: g++ 12 warns (-Wrestrict, a false positive) on a chain of + here.
  std::string cmd = "bash '";
  cmd += SOJOURN_BENCH_CRIU_SCRIPT;
  cmd += "' '";
  cmd += SOJOURN_BENCH_CRIU_HOLDER;
  cmd += "' --rounds ";
  cmd += std::to_string(rounds);
  for (const StrongFigures& s : strong) {
    cmd += ' ';
    cmd += std::to_string(s.kb);
  }
  std::printf("\nCRIU beside the strong hop: `criu dump` and `criu restore -d` of a process holding the same LuaJIT heap,\n"
              "%d round(s) per size (medians), milliseconds; ratio = CRIU (dump + restore to running) / strong hop\n",
              rounds);
  std::fflush(stdout);
  std::FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    std::perror("bench_migration_cost: popen bench/run_criu.sh");
    return 1;
  }
  std::map<int, std::vector<CriuRound>> by_size;
  char buf[8192];
  while (std::fgets(buf, sizeof buf, pipe) != nullptr) {
    std::string line(buf);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line.rfind("criu-note,", 0) == 0) {
      std::printf("  %s\n", line.substr(10).c_str());
      continue;
    }
    int kb = 0;
    CriuRound r;
    if (parse_line(line, kb, r)) by_size[kb].push_back(std::move(r));
  }
  const int status = ::pclose(pipe);
  if (status != 0) std::printf("bench/run_criu.sh exited with status %d\n", status);
  std::printf("%-6s %10s %12s %10s %12s %12s %9s %10s %10s %10s %7s\n", "data", "strong_ms", "strong_wire", "dump_ms",
              "image_bytes", "zstd_bytes", "zstd_ms", "restore_ms", "running_ms", "criu_ms", "ratio");
  for (const StrongFigures& s : strong) {
    const auto& got = by_size[s.kb];
    std::vector<double> dump, zstd, restore, running;
    std::vector<double> image, packed;
    std::string reason;
    for (const CriuRound& r : got) {
      if (!r.ok) {
        if (reason.empty()) reason = r.reason;
        continue;
      }
      dump.push_back(r.dump_ms);
      zstd.push_back(r.zstd_ms);
      restore.push_back(r.restore_ms);
      running.push_back(r.running_ms);
      image.push_back(static_cast<double>(r.image_bytes));
      packed.push_back(static_cast<double>(r.zstd_bytes));
    }
    char strong_ms[32] = "-";
    char strong_wire[32] = "-";
    if (s.refused.empty()) {
      std::snprintf(strong_ms, sizeof strong_ms, "%.2f", s.hop_us / 1000);
      std::snprintf(strong_wire, sizeof strong_wire, "%llu", static_cast<unsigned long long>(s.wire_bytes));
    }
    if (dump.empty()) {
      std::printf("%-6s %10s %12s CRIU refused: %s\n", size_name(s.kb).c_str(), strong_ms, strong_wire,
                  reason.empty() ? "bench/run_criu.sh gave no row for this size" : reason.c_str());
      continue;
    }
    const double criu_ms = median_ms(dump) + median_ms(running);
    char ratio[32] = "-";
    if (s.refused.empty() && s.hop_us > 0) std::snprintf(ratio, sizeof ratio, "%.2f", criu_ms / (s.hop_us / 1000));
    std::printf("%-6s %10s %12s %10.2f %12.0f %12.0f %9.2f %10.2f %10.2f %10.2f %7s\n", size_name(s.kb).c_str(), strong_ms,
                strong_wire, median_ms(dump), median_ms(image), median_ms(packed), median_ms(zstd), median_ms(restore),
                median_ms(running), criu_ms, ratio);
  }
  std::printf("dump_ms: criu dump (it stops, copies and kills the process); image_bytes: its image files; zstd_bytes /\n"
              "zstd_ms: the images as one tar through zstd -1 (the level of sojourn's images); restore_ms: criu restore -d\n"
              "until it returns; running_ms: from the restore's start to the process answering with its heap whole;\n"
              "criu_ms: dump + running (no transfer: one machine).\n");
  return 0;
}

}  // namespace sojourn::bench
