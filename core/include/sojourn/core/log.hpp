// A minimal thread-safe logger to stderr: "LEVEL component: message".
#pragma once

#include <string_view>

namespace sojourn {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;
// Parses "debug", "info", "warn", "error" or "off"; returns false for anything else.
bool parse_log_level(std::string_view name, LogLevel& out) noexcept;
void log(LogLevel level, std::string_view component, std::string_view message);

inline void log_debug(std::string_view c, std::string_view m) { if (log_level() <= LogLevel::debug) log(LogLevel::debug, c, m); }
inline void log_info(std::string_view c, std::string_view m) { if (log_level() <= LogLevel::info) log(LogLevel::info, c, m); }
inline void log_warn(std::string_view c, std::string_view m) { if (log_level() <= LogLevel::warn) log(LogLevel::warn, c, m); }
inline void log_error(std::string_view c, std::string_view m) { if (log_level() <= LogLevel::error) log(LogLevel::error, c, m); }

}  // namespace sojourn
