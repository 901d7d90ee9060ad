// What a warm guest keeps resident after weak agent steps with a large state: the request's
// bytes are freed once decoded, before the step runs, so the step's conversion of the state
// and its answer reuse that memory instead of growing the guest's C++ heap by one more copy
// of the state.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/process/warm_guest_support.hpp"

using namespace warm_test;
using sojourn::sandbox::AgentInput;
using sojourn::sandbox::AgentOutcome;

namespace {

// A field of /proc/PID/status in kB ("VmRSS", "PPid"); -1 when the process is gone.
long status_field(const std::string& pid, const std::string& field) {
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

// The zygote's children (its guests).
std::vector<std::string> children_of(long parent) {
  std::vector<std::string> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename().string();
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (status_field(pid, "PPid") == parent) out.push_back(pid);
  }
  return out;
}

// One weak step of an agent that counts its steps in `n` and goes on; `state` becomes the
// step's outcome.
void step_once(ProcessJail& jail, Value& state) {
  RunInput input;
  input.source = "function start(s) s.n = s.n + 1 agent.go('peer B', 'start') end";
  input.chunk_name = "agent";
  input.limits = Limits{10'000'000, 128u << 20, 20'000};
  input.principal = "signer a";
  Result<AgentOutcome> out = jail.run_agent(input, AgentInput{"start", state, Value::table()}, nullptr);
  REQUIRE_MESSAGE(out.ok(), (out.ok() ? "" : out.error().message));
  CHECK(out->went);
  state = out->state;
}

}  // namespace

TEST_CASE("a warm guest's weak steps with a 4 MB state grow its resident memory by four copies of the state, not five") {
  auto jail = start(1);
  Value state = Value::table();
  state.set("n", 0);
  const auto step = [&] { step_once(*jail, state); };
  step();  // the guest forked, its chunk kept in its snapshot; a small state
  REQUIRE(wait_for_warm(*jail, 1));
  const long zygote = jail->status().zygote_pid;
  const auto largest_resident_kb = [&] {
    long largest = 0;
    for (const std::string& pid : children_of(zygote)) largest = std::max(largest, status_field(pid, "VmRSS"));
    return largest;
  };
  step();  // in the warm guest, which stays the only one serving
  const long small_kb = largest_resident_kb();
  const std::uint64_t started = jail->status().guests_started;
  constexpr std::size_t kState = 4u << 20;
  state.set("payload", std::string(kState, 'x'));
  for (int i = 0; i < 4; ++i) step();
  REQUIRE(jail->status().guests_started == started);  // the same guest served every step
  CHECK(state.get("n").as_integer() == 6);
  CHECK(state.get("payload").as_string().size() == kState);
  const long large_kb = largest_resident_kb();
  const long state_kb = static_cast<long>(kState / 1024);
  MESSAGE("guest VmRSS " << small_kb << " kB after a small step, " << large_kb << " kB after 4 MB steps");
  // Each 4 MB step holds four copies of the state at once: the decoded request, its copy in
  // the Lua arena, the step's outcome and the answer frame (which takes the block of the
  // request's bytes, freed before the step). Before, the request's bytes were held through the
  // step: a fifth copy (the growth read ~20.1 MB here, against ~16.0 MB).
  REQUIRE(small_kb > 0);
  CHECK(large_kb - small_kb < 4 * state_kb + state_kb / 2);
}

TEST_CASE("a warm guest whose steps carry a 6 MB state stays within the pool's resident cap and serves them all") {
  // The pool retires a guest whose resident memory passed its cap (32 MiB) after a run. Five
  // copies of a 6 MB state (~33 MB with the guest's own) passed it after every step, so each
  // step forked a new guest; four (~27 MB) stay under it.
  auto jail = start(1);
  Value state = Value::table();
  state.set("n", 0);
  const auto step = [&] { step_once(*jail, state); };
  step();  // the guest forked, its chunk kept in its snapshot; a small state
  REQUIRE(wait_for_warm(*jail, 1));
  step();
  const std::uint64_t started = jail->status().guests_started;
  const std::uint64_t reused = jail->status().guests_reused;
  state.set("payload", std::string(6u << 20, 'x'));
  constexpr int kSteps = 4;
  for (int i = 0; i < kSteps; ++i) step();
  CHECK(state.get("n").as_integer() == 2 + kSteps);
  MESSAGE("guests started during the 6 MB steps: " << jail->status().guests_started - started);
  CHECK(jail->status().guests_reused - reused == kSteps);
  CHECK(jail->status().guests_started == started);
}
