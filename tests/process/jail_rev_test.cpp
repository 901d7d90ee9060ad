// The trusted level's whole test suite (and, in jail_agent_test.cpp, its agent-step suite), run again with every run_lua call going through
// the process jail instead: the same results, the same limits, the same error messages.
// (The conversion tests at its end use a local lua_State and run unchanged.)
#include <memory>

#include "sojourn/sandbox/lua_sandbox.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace sojourn::sandbox {
Result<Value> run_in_process_jail(const RunInput& input, HostCalls* host);
}  // namespace sojourn::sandbox

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

Result<Value> run_in_process_jail(const RunInput& input, HostCalls* host) { return shared_jail().run(input, host); }

Result<AgentOutcome> run_agent_in_process_jail(const RunInput& input, const AgentInput& agent, HostCalls* host) {
  return shared_jail().run_agent(input, agent, host);
}

}  // namespace sojourn::sandbox

TEST_CASE("zz: the runs of this suite went through guests of the process jail") {
  // Named to sort last; the suites above make well over 200 runs.
  CHECK(sojourn::sandbox::shared_jail().status().guests_started > 200);
}
