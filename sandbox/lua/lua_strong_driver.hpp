// The strong agent's driver (lua_strong_driver.cpp), shared by the step that starts an agent
// (run_agent_strong, lua_sandbox.cpp) and the resume of a restored one.
#pragma once

#include <string_view>

#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/lua/lua_strong.hpp"

struct lua_State;

namespace sojourn::sandbox::strong {

// Resumes the agent coroutine `co` under `ctx` until it finishes, fails or stops at a go or a
// checkpoint that passes the travel check (a refused stop makes that agent.go or
// agent.checkpoint raise, and the agent goes on). At a stop: the JIT's traces are flushed, a
// full collection runs, then `at_stop` with the coroutine's address. `chunk` names errors.
Result<AgentOutcome> drive(lua_State* co, sandbox::detail::RunContext& ctx, std::string_view chunk,
                           const StopSink& at_stop);

}  // namespace sojourn::sandbox::strong
