// A minimal thread-safe logger to stderr. Text lines read
// "2026-12-04T15:20:01.123Z warn component: message" (ISO 8601 UTC, milliseconds); the JSON
// format writes one object a line: {"time":...,"level":...,"component":...,"message":...}.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

namespace sojourn {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3, off = 4 };
enum class LogFormat { text, json };

void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;
// Parses "debug", "info", "warn", "error" or "off"; returns false for anything else.
bool parse_log_level(std::string_view name, LogLevel& out) noexcept;

// The initial format is $SOJOURN_LOG_FORMAT's, else text.
void set_log_format(LogFormat format) noexcept;
LogFormat log_format() noexcept;
// Parses "text" or "json"; returns false for anything else.
bool parse_log_format(std::string_view name, LogFormat& out) noexcept;

void log(LogLevel level, std::string_view component, std::string_view message);

// "2026-12-04T15:20:01.123Z": UTC, milliseconds, always 24 characters.
std::string iso8601_utc(std::chrono::system_clock::time_point t);
// The line log() writes for these, newline included. JSON strings are escaped; bytes that
// are not UTF-8 become U+FFFD, so every line parses.
std::string format_log_line(LogFormat format, std::chrono::system_clock::time_point t, LogLevel level,
                            std::string_view component, std::string_view message);

// Where lines go, one call a line (under the logger's lock: a sink must not log). An empty
// sink restores stderr. For tests and embedders.
using LogSink = std::function<void(std::string_view line)>;
void set_log_sink(LogSink sink);

inline void log_debug(std::string_view c, std::string_view m) { if (log_level() <= LogLevel::debug) log(LogLevel::debug, c, m); }
inline void log_info(std::string_view c, std::string_view m) { if (log_level() <= LogLevel::info) log(LogLevel::info, c, m); }
inline void log_warn(std::string_view c, std::string_view m) { if (log_level() <= LogLevel::warn) log(LogLevel::warn, c, m); }
inline void log_error(std::string_view c, std::string_view m) { if (log_level() <= LogLevel::error) log(LogLevel::error, c, m); }

}  // namespace sojourn
