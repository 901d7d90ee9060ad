// The agent-step suite of the trusted level (tests/sandbox/agent_run_test.cpp), run again
// with every run_agent call going through ProcessJail::run_agent: agent.go, agent.wait,
// agent.* host calls and require_remote cross the guest's channel unchanged.
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox {
Result<AgentOutcome> run_agent_in_process_jail(const RunInput& input, const AgentInput& agent, HostCalls* host);
}  // namespace sojourn::sandbox

#define run_agent run_agent_in_process_jail
#include "../sandbox/agent_run_test.cpp"
#undef run_agent
