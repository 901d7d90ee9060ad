// How often a warm guest sleeps on an agent step: it waits for the host's reply to each host
// call and for its next request, and is woken only by the host's bytes. A wait in a unix
// stream socket's read was also woken each time the host read what the guest wrote (the
// kernel's "room to write" wake-up on the same queue), two more context switches per frame.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "tests/process/warm_guest_support.hpp"

using namespace warm_test;
using sojourn::sandbox::AgentInput;
using sojourn::sandbox::AgentOutcome;
using sojourn::sandbox::HostCalls;

namespace {

struct Marks final : HostCalls {
  int calls = 0;
  Result<Value> call(std::string_view, const Value&) override {
    ++calls;
    return Value(1);
  }
};

// A field of /proc/PID/status ("PPid", "voluntary_ctxt_switches"); -1 when the process is gone.
long status_field(const std::string& pid, const std::string& field) {
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

// The voluntary context switches (sleeps) of each child of `parent` (the zygote's guests).
std::map<std::string, long> sleeps_of_children(long parent) {
  std::map<std::string, long> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename().string();
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (status_field(pid, "PPid") != parent) continue;
    const long sleeps = status_field(pid, "voluntary_ctxt_switches");
    if (sleeps >= 0) out[pid] = sleeps;
  }
  return out;
}

}  // namespace

TEST_CASE("a warm guest sleeps twice per agent step with one host call: the host reading its frames wakes it no more") {
  auto jail = start(1);
  Marks host;
  RunInput input;
  input.source = "function start(s) s.n = s.n + node.call('bench.mark') agent.go('peer B', 'start') end";
  input.chunk_name = "agent";
  input.limits = limits();
  input.principal = "signer a";
  Value state = Value::table();
  state.set("n", 0);
  const auto step = [&] {
    Result<AgentOutcome> out = jail->run_agent(input, AgentInput{"start", state, Value::table()}, &host);
    REQUIRE_MESSAGE(out.ok(), (out.ok() ? "" : out.error().message));
    CHECK(out->went);
    state = out->state;
  };
  for (int i = 0; i < 3; ++i) step();  // the guest forked, its chunk kept in its snapshot
  REQUIRE(wait_for_warm(*jail, 1));
  const long zygote = jail->status().zygote_pid;
  const std::uint64_t started = jail->status().guests_started;
  const std::map<std::string, long> before = sleeps_of_children(zygote);
  constexpr int kSteps = 20;
  for (int i = 0; i < kSteps; ++i) step();
  const std::map<std::string, long> after = sleeps_of_children(zygote);
  REQUIRE(jail->status().guests_started == started);  // the same guests throughout
  CHECK(state.get("n").as_integer() == 3 + kSteps);
  CHECK(host.calls == 3 + kSteps);
  long slept = 0;
  for (const auto& [pid, count] : after) {
    const auto was = before.find(pid);
    if (was != before.end()) slept += count - was->second;
  }
  // Per step: the wait for the host's reply and the wait for the next request. Woken at each
  // host read as well, it slept about four times per step (and never fewer than three).
  CHECK(slept >= kSteps);
  CHECK(slept <= 2 * kSteps + 2);
}
