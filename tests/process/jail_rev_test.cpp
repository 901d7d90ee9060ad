// The trusted level's whole test suite (and, in jail_agent_test.cpp and jail_closure*_test.cpp, its agent-step
// and closure suites), run again with every run_lua call going through
// the process jail instead: the same results, the same limits, the same error messages.
// (The conversion tests at its end use a local lua_State and run unchanged.)
#include <atomic>
#include <memory>

#include "in_process_jail.hpp"
#include "sojourn/sandbox/process_jail.hpp"

#define run_lua run_in_process_jail
#include "../sandbox/lua_sandbox_test.cpp"
#undef run_lua

namespace sojourn::sandbox {

namespace {
ProcessJail& shared_jail() {
  static const std::unique_ptr<ProcessJail> jail = [] {
    auto started = ProcessJail::start(ProcessJailOptions{});
    REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
    return std::move(*started);
  }();
  return *jail;
}
}  // namespace

// Runs that pass run_lua's own checks (non-zero limits, no bytecode, no abort) must each
// have started a guest.
std::atomic<std::uint64_t> g_guest_runs{0};
void count_guest_run(const RunInput& input) {
  const Limits& l = input.limits;
  const bool refused_early = l.cpu_instructions == 0 || l.memory_bytes == 0 || l.wall_ms == 0 ||
                             (!input.source.empty() && input.source.front() == '\x1b') ||
                             (input.abort != nullptr && input.abort->load());
  if (!refused_early) ++g_guest_runs;
}

Result<Value> run_in_process_jail(const RunInput& input, HostCalls* host) {
  count_guest_run(input);
  return shared_jail().run(input, host);
}

Result<AgentOutcome> run_agent_in_process_jail(const RunInput& input, const AgentInput& agent, HostCalls* host) {
  count_guest_run(input);
  return shared_jail().run_agent(input, agent, host);
}

}  // namespace sojourn::sandbox

TEST_CASE("every run of the included suites went through a guest of the process jail") {
  // doctest orders by file, then line: this test runs after the included suites.
  CHECK(sojourn::sandbox::shared_jail().status().guests_started >= sojourn::sandbox::g_guest_runs.load());
  CHECK(sojourn::sandbox::shared_jail().status().zygote_starts == 1);
}
