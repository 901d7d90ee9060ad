// The logger behind log.hpp; SOJOURN_LOG sets the initial level.
#include "sojourn/core/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace sojourn {

namespace {
LogLevel initial_level() {
  LogLevel l = LogLevel::warn;
  if (const char* env = std::getenv("SOJOURN_LOG")) parse_log_level(env, l);
  return l;
}
std::atomic<LogLevel>& level_ref() {
  static std::atomic<LogLevel> level{initial_level()};
  return level;
}
std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace

void set_log_level(LogLevel level) noexcept { level_ref().store(level); }
LogLevel log_level() noexcept { return level_ref().load(std::memory_order_relaxed); }

bool parse_log_level(std::string_view name, LogLevel& out) noexcept {
  static constexpr std::pair<std::string_view, LogLevel> names[] = {
      {"debug", LogLevel::debug}, {"info", LogLevel::info}, {"warn", LogLevel::warn},
      {"error", LogLevel::error}, {"off", LogLevel::off}};
  for (const auto& [n, l] : names) {
    if (n == name) {
      out = l;
      return true;
    }
  }
  return false;
}

void log(LogLevel level, std::string_view component, std::string_view message) {
  if (level < log_level() || level == LogLevel::off) return;
  static constexpr const char* names[] = {"debug", "info", "warn", "error"};
  using namespace std::chrono;
  auto ms = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  std::string line = std::to_string(ms / 1000) + "." + std::to_string(1000 + ms % 1000).substr(1) + " " +
                     names[static_cast<int>(level)] + " " + std::string(component) + ": " + std::string(message) + "\n";
  std::lock_guard lock(log_mutex());
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace sojourn
