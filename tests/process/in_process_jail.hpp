// The trusted level's run_lua and run_agent, through the process jail instead (defined in
// jail_rev_test.cpp): the jail_*_test.cpp files include a trusted-level suite with these in
// place of run_lua/run_agent, so the same tests check both levels.
#pragma once

#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox {
Result<Value> run_in_process_jail(const RunInput& input, HostCalls* host);
Result<AgentOutcome> run_agent_in_process_jail(const RunInput& input, const AgentInput& agent, HostCalls* host);
}  // namespace sojourn::sandbox
