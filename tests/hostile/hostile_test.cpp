// The hostile-code suite: every tests/hostile/*.lua program runs at the trusted level and
// in the process jail, must end with exactly the error its first line declares, and the
// level must serve the next run (one TEST_CASE_TEMPLATE over the levels of
// tests/support/jail_levels.hpp). Built a second time as microvm_hostile_test
// (SOJOURN_SUITE_MICROVM), it runs every program of the process level, unchanged, in the
// microVM jail (kvm_tests: nested QEMU where the host has no usable KVM). Header lines:
//   -- expect: CODE MESSAGE      (or "-- expect: ok": both levels give the same result)
//   -- limits: cpu=N memory=N wall=N   (defaults 10000000, 16777216, 5000)
//   -- jit: on                   (the JIT is allowed for this run)
//   -- levels: trusted process   (where it runs; default both)
//   -- arg-function: TEXT        (the chunk's `...` is one function Value with this text, from
//                                 chunk "=agent" line 1, as a peer could send it; "\n" is a newline)
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "sojourn/sandbox/lua_sandbox.hpp"
#include "sojourn/sandbox/microvm_jail.hpp"
#include "tests/support/jail_levels.hpp"
#include "tests/support/time_scale.hpp"

namespace {

namespace fs = std::filesystem;
using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::Jail;
using sojourn::sandbox::RunInput;

struct Program {
  std::string name;
  std::string source;
  std::string expect_code;
  std::string expect_message;
  Limits limits{10'000'000, 16u << 20, 5000};
  bool jit = false;
  std::vector<std::string> levels{"trusted", "process"};
  Value args;
};

std::string unescape_newlines(std::string text) {
  for (std::size_t at = text.find("\\n"); at != std::string::npos; at = text.find("\\n", at + 1)) text.replace(at, 2, "\n");
  return text;
}

std::string header_value(const std::string& line, const std::string& key) {
  const std::string prefix = "-- " + key + ":";
  if (line.rfind(prefix, 0) != 0) return {};
  std::string rest = line.substr(prefix.size());
  rest.erase(0, rest.find_first_not_of(' '));
  return rest;
}

Program parse(const fs::path& path) {
  Program p;
  p.name = path.stem().string();
  std::ifstream in(path);
  std::stringstream all;
  all << in.rdbuf();
  p.source = all.str();
  std::istringstream lines(p.source);
  for (std::string line; std::getline(lines, line) && line.rfind("--", 0) == 0;) {
    if (auto v = header_value(line, "expect"); !v.empty()) {
      const auto space = v.find(' ');
      p.expect_code = v.substr(0, space);
      p.expect_message = space == std::string::npos ? "" : v.substr(space + 1);
    }
    if (auto v = header_value(line, "limits"); !v.empty()) {
      std::istringstream items(v);
      for (std::string item; items >> item;) {
        const auto eq = item.find('=');
        const std::string key = item.substr(0, eq);
        const auto value = std::stoull(item.substr(eq + 1));
        if (key == "cpu") p.limits.cpu_instructions = value;
        if (key == "memory") p.limits.memory_bytes = value;
        if (key == "wall") p.limits.wall_ms = static_cast<std::uint32_t>(value);
      }
    }
    if (header_value(line, "jit") == "on") p.jit = true;
    if (auto v = header_value(line, "arg-function"); !v.empty()) {
      p.args = Value::array({Value::function(unescape_newlines(v), "=agent", 1)});
    }
    if (auto v = header_value(line, "levels"); !v.empty()) {
      p.levels.clear();
      std::istringstream items(v);
      for (std::string level; items >> level;) p.levels.push_back(level);
    }
  }
  return p;
}

std::vector<Program> programs() {
  std::vector<Program> all;
  for (const auto& entry : fs::directory_iterator(SOJOURN_HOSTILE_DIR)) {
    if (entry.path().extension() == ".lua") all.push_back(parse(entry.path()));
  }
  std::sort(all.begin(), all.end(), [](const Program& a, const Program& b) { return a.name < b.name; });
  return all;
}

class EchoHost : public HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    if (service == "echo") return args;
    return sojourn::make_error(Errc::no_such_service, "no such service: " + std::string(service));
  }
};

Result<Value> run_at(Jail& jail, const Program& p, std::string_view source, const Limits& limits,
                     bool jit, const Value& args = {}) {
  RunInput input;
  input.source = source;
  input.args = args;
  input.chunk_name = p.name;
  input.limits = limits;
  input.allow_jit = jit;
  EchoHost host;
  return jail.run(input, &host);
}

void check_level(Jail& jail) {
  const std::string level(sojourn::isolation_name(jail.level()));
  const std::vector<Program> all = programs();
  CHECK(all.size() >= 20);
  int ran = 0;
  for (const Program& p : all) {
    // The microVM runs what the process jail runs, with the same expected outcome.
    const std::string listed = level == "microvm" ? "process" : level;
    if (std::find(p.levels.begin(), p.levels.end(), listed) == p.levels.end()) continue;
    INFO("program " << p.name << " at the " << level << " level");
    REQUIRE_FALSE(p.expect_code.empty());
    // A program that is not about the deadline gets its wall-clock limit scaled by the host's
    // slowness (an emulated microVM, a loaded host: a memory bomb must end with memory_limit);
    // a deadline program keeps its own, which its expected message names.
    Limits limits = p.limits;
    if (p.expect_code != "deadline") limits.wall_ms = test_support::scaled_ms(limits.wall_ms);
    Result<Value> r = run_at(jail, p, p.source, limits, p.jit, p.args);
    if (p.expect_code == "ok") {
      REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
      Result<Value> trusted = run_at(jail_levels::Trusted::jail(), p, p.source, limits, false, p.args);
      REQUIRE(trusted.ok());
      CHECK(sojourn::deep_equal(*r, *trusted));
    } else {
      REQUIRE_FALSE(r.ok());
      CHECK(std::string(sojourn::errc_name(r.error().code)) == p.expect_code);
      CHECK(r.error().message == p.expect_message);
    }
    // The level goes on serving.
    Result<Value> next = run_at(jail, p, "return 1 + 1", Limits{10'000, 1u << 20, 1000}, false);
    REQUIRE(next.ok());
    CHECK(next->get(1).as_integer() == 2);
    ++ran;
  }
  CHECK(ran >= 20);
}

}  // namespace

TEST_CASE_TEMPLATE("every hostile program is contained with its declared error", Level, SOJOURN_SUITE_LEVELS) {
  check_level(Level::jail());
  if constexpr (Level::level == sojourn::Isolation::microvm) {
    // The microVM runs what the process jail runs, each program in a microVM of its own.
    auto* microvm = dynamic_cast<sojourn::sandbox::MicrovmJail*>(&Level::jail());
    REQUIRE(microvm != nullptr);
    const auto status = microvm->status();
    MESSAGE("microVM master booted in " << status.master_boot_ms << " ms; " << status.runs << " microVMs, "
                                        << status.killed << " killed by the host");
    CHECK(status.runs >= 40);
  }
}
