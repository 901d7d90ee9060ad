// Strong steps (issue 13): the agent's entry runs in a Lua coroutine; agent.go(peer) without an
// entry, and agent.checkpoint(), yield to the top, where no C frame of Lua remains, so the arena's
// bytes are the whole execution state (sandbox/image seals them). A go inside coroutines the
// agent resumed is carried up through the chain of resumes by Lua wrappers around
// coroutine.resume and coroutine.wrap, which re-resume the inner coroutine on the way back: the
// chain is rebuilt on arrival by the same code that was imaged.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "sojourn/core/error.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

struct lua_State;

namespace sojourn::sandbox::strong {

// Installs the strong runtime in L's globals: the coroutine wrappers, agent.go (a peer without an
// entry yields to the top; with an entry it calls the agent.go that was there, weak semantics)
// and agent.checkpoint(). Creates the `agent` table when there is none. Lua errors are raised.
void open_strong_api(lua_State* L);

// A new coroutine that will call the function below the `nargs` values at the top of L's stack
// with them (all popped). Anchored in L's registry so that it survives any collection, and it
// travels with the arena.
lua_State* start_agent(lua_State* L, int nargs = 0);

// The state's main thread, as open_strong_api recorded it (where host-side work on a restored
// state runs, the agent coroutine being suspended).
lua_State* main_thread(lua_State* co);

enum class Stop {
  finished,    // the entry returned: its results are on the coroutine's stack
  went,        // agent.go(peer): image the arena, then resume_agent at the destination
  checkpoint,  // agent.checkpoint(): image the arena, then resume_agent here
  failed,      // a Lua error (message in `error`), or a yield that is not the runtime's
};

struct Step {
  Stop stop = Stop::failed;
  std::string peer;    // for went
  int results = 0;     // for finished: how many values the entry returned (on co's stack)
  std::string error;   // for failed
};

// Runs the agent coroutine until it finishes, fails or stops at a go or a checkpoint. At a stop,
// the coroutine is suspended with nothing of its own on the C stack. Resuming it again (here or
// in another guest holding the restored arena) makes that agent.go or agent.checkpoint return
// (agent.go returns true; agent.checkpoint returns true). With a `refusal`, the stop is
// refused instead: that agent.go or agent.checkpoint raises it as a Lua error at its caller.
Step resume_agent(lua_State* co, const std::string* refusal = nullptr);

// Called at a strong stop while the state is live and the agent suspended, with the agent
// coroutine's address: the guest writes its arena's used span there. An error fails the step.
using StopSink = std::function<Result<void>(std::uintptr_t agent_handle)>;

// A strong agent step under the sandbox's environment and limits (as run_agent). The outcome's
// `strong_stop` is set when the agent stopped at agent.go(peer) (went, go_peer) or at
// agent.checkpoint() (checkpoint); `at_stop` ran then. A weak agent.go(peer, entry) or
// agent.wait ends the step as in run_agent (the state table is not converted: it is in the
// heap). Only for a process whose Lua heap is an installed arena (the guest).
Result<AgentOutcome> run_agent_strong(const RunInput& input, const AgentInput& agent, HostCalls* host,
                                      const StopSink& at_stop);

// Resumes the agent at `agent_handle` in an arena just restored from an image: rebinds the
// allocator to a fresh run context with `input`'s limits (never the image's), the count hook,
// the deadline, the host calls and the `agent` facts in `info` (raw sets), then goes on as
// run_agent_strong. input.source is not used; input.chunk_name names errors.
Result<AgentOutcome> resume_agent_strong(std::uintptr_t agent_handle, const RunInput& input, const Value& info,
                                         HostCalls* host, const StopSink& at_stop);

}  // namespace sojourn::sandbox::strong
