// Test support: wait for a line the code under test logs anyway ("agent ... moved to ..."),
// an event to wait on instead of a sleep that guesses how long something takes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/log.hpp"

namespace sojourn::test {

// While it lives, the logger's lines (at `level` and above) come here instead of stderr.
class LogWatch {
 public:
  explicit LogWatch(LogLevel level = LogLevel::info) : saved_level_(log_level()) {
    set_log_level(level);
    set_log_sink([this](std::string_view line) {
      std::lock_guard lock(mutex_);
      lines_.emplace_back(line);
      logged_.notify_all();
    });
  }
  ~LogWatch() {
    set_log_sink({});
    set_log_level(saved_level_);
  }
  LogWatch(const LogWatch&) = delete;
  LogWatch& operator=(const LogWatch&) = delete;

  // True once a line containing `text` has been logged since the watch began; false after `timeout`.
  bool wait_for(const std::string& text, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return logged_.wait_for(lock, timeout, [&] {
      for (const auto& line : lines_) {
        if (line.find(text) != std::string::npos) return true;
      }
      return false;
    });
  }

 private:
  LogLevel saved_level_;
  std::mutex mutex_;
  std::condition_variable logged_;
  std::vector<std::string> lines_;
};

}  // namespace sojourn::test
