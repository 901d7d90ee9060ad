// The logger's line formats (ISO 8601 UTC text, JSON lines) and its sink.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "sojourn/core/json.hpp"
#include "sojourn/core/log.hpp"

using namespace sojourn;

namespace {

std::chrono::system_clock::time_point at_unix_ms(std::int64_t ms) {
  return std::chrono::system_clock::time_point(std::chrono::milliseconds(ms));
}

// Takes the logger's lines for the life of the test, then gives stderr, level and format back.
struct CapturedLog {
  std::vector<std::string> lines;
  LogLevel level = log_level();
  LogFormat format = log_format();
  CapturedLog() {
    set_log_sink([this](std::string_view line) { lines.emplace_back(line); });
  }
  ~CapturedLog() {
    set_log_sink({});
    set_log_level(level);
    set_log_format(format);
  }
};

}  // namespace

TEST_CASE("log times are ISO 8601 UTC with milliseconds, always 24 characters") {
  CHECK(iso8601_utc(at_unix_ms(0)) == "1970-01-01T00:00:00.000Z");
  CHECK(iso8601_utc(at_unix_ms(1'000'000'000'123)) == "2001-09-09T01:46:40.123Z");
  CHECK(iso8601_utc(at_unix_ms(1'796'397'721'489)) == "2026-12-04T15:22:01.489Z");
  CHECK(iso8601_utc(at_unix_ms(1'796'397'721'009)) == "2026-12-04T15:22:01.009Z");
  CHECK(iso8601_utc(at_unix_ms(-1)) == "1969-12-31T23:59:59.999Z");
  CHECK(iso8601_utc(std::chrono::system_clock::now()).size() == 24);
}

TEST_CASE("a text log line is time, level, component and message") {
  CHECK(format_log_line(LogFormat::text, at_unix_ms(1'000'000'000'123), LogLevel::warn, "node", "n0: hello") ==
        "2001-09-09T01:46:40.123Z warn node: n0: hello\n");
}

TEST_CASE("a JSON log line is one object on one line, escaped, even for bytes that are not UTF-8") {
  const std::string line =
      format_log_line(LogFormat::json, at_unix_ms(1'000'000'000'123), LogLevel::error, "agents", "say \"hi\"\nthen\xff");
  CHECK(line == "{\"time\":\"2001-09-09T01:46:40.123Z\",\"level\":\"error\",\"component\":\"agents\","
                "\"message\":\"say \\\"hi\\\"\\nthen\xef\xbf\xbd\"}\n");
  CHECK(line.find('\n') == line.size() - 1);
  auto parsed = value_from_json(line);
  REQUIRE(parsed.ok());
  CHECK(parsed->get("message").as_string() == "say \"hi\"\nthen\xef\xbf\xbd");
}

TEST_CASE("the log format is chosen by name, and log() writes lines in it to the sink") {
  LogFormat f = LogFormat::text;
  CHECK(parse_log_format("json", f));
  CHECK(f == LogFormat::json);
  CHECK(parse_log_format("text", f));
  CHECK(f == LogFormat::text);
  CHECK_FALSE(parse_log_format("JSON", f));
  CHECK_FALSE(parse_log_format("", f));

  CapturedLog captured;
  set_log_level(LogLevel::info);
  set_log_format(LogFormat::json);
  log_info("test", "one");
  log_debug("test", "not at this level");
  set_log_format(LogFormat::text);
  log_warn("test", "two");
  REQUIRE(captured.lines.size() == 2);
  auto first = value_from_json(captured.lines[0]);
  REQUIRE(first.ok());
  CHECK(first->get("level").as_string() == "info");
  CHECK(first->get("component").as_string() == "test");
  CHECK(first->get("message").as_string() == "one");
  CHECK(first->get("time").as_string().size() == 24);
  CHECK(captured.lines[1].substr(24) == " warn test: two\n");
}
