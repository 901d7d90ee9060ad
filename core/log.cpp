// The logger behind log.hpp; SOJOURN_LOG sets the initial level, SOJOURN_LOG_FORMAT the format.
#include "sojourn/core/log.hpp"

#include <time.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

namespace sojourn {

namespace {
constexpr const char* kLevelNames[] = {"debug", "info", "warn", "error"};

LogLevel initial_level() {
  LogLevel l = LogLevel::warn;
  if (const char* env = std::getenv("SOJOURN_LOG")) parse_log_level(env, l);
  return l;
}
LogFormat initial_format() {
  LogFormat f = LogFormat::text;
  if (const char* env = std::getenv("SOJOURN_LOG_FORMAT")) parse_log_format(env, f);
  return f;
}
std::atomic<LogLevel>& level_ref() {
  static std::atomic<LogLevel> level{initial_level()};
  return level;
}
std::atomic<LogFormat>& format_ref() {
  static std::atomic<LogFormat> format{initial_format()};
  return format;
}
// The lock that keeps lines whole, and the sink it guards.
struct Output {
  std::mutex mutex;
  LogSink sink;
};
Output& output() {
  static Output o;
  return o;
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

void set_log_format(LogFormat format) noexcept { format_ref().store(format); }
LogFormat log_format() noexcept { return format_ref().load(std::memory_order_relaxed); }

bool parse_log_format(std::string_view name, LogFormat& out) noexcept {
  if (name == "text") out = LogFormat::text;
  else if (name == "json") out = LogFormat::json;
  else return false;
  return true;
}

std::string iso8601_utc(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  const auto ms = floor<milliseconds>(t).time_since_epoch().count();
  // Floor division, so that a time before 1970 still gets 0..999 milliseconds.
  const std::int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
  const auto millis = static_cast<int>(ms - secs * 1000);
  const time_t tt = static_cast<time_t>(secs);
  struct tm tm {};
  gmtime_r(&tt, &tm);
  char buf[64];  // room for any int year
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  return buf;
}

std::string format_log_line(LogFormat format, std::chrono::system_clock::time_point t, LogLevel level,
                            std::string_view component, std::string_view message) {
  const char* level_name = level < LogLevel::off ? kLevelNames[static_cast<int>(level)] : "off";
  if (format == LogFormat::json) {
    nlohmann::ordered_json j;
    j["time"] = iso8601_utc(t);
    j["level"] = level_name;
    j["component"] = std::string(component);
    j["message"] = std::string(message);
    return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  }
  std::string line = iso8601_utc(t);
  line.append(" ").append(level_name).append(" ").append(component).append(": ").append(message).append("\n");
  return line;
}

void set_log_sink(LogSink sink) {
  std::lock_guard lock(output().mutex);
  output().sink = std::move(sink);
}

void log(LogLevel level, std::string_view component, std::string_view message) {
  if (level < log_level() || level == LogLevel::off) return;
  const std::string line = format_log_line(log_format(), std::chrono::system_clock::now(), level, component, message);
  std::lock_guard lock(output().mutex);
  if (output().sink) output().sink(line);
  else std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace sojourn
