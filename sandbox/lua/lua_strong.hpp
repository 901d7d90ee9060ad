// Strong steps (issue 13): the agent's entry runs in a Lua coroutine; agent.go(peer) without an
// entry, and agent.checkpoint(), yield to the top, where no C frame of Lua remains, so the arena's
// bytes are the whole execution state (sandbox/image seals them). A go inside coroutines the
// agent resumed is carried up through the chain of resumes by Lua wrappers around
// coroutine.resume and coroutine.wrap, which re-resume the inner coroutine on the way back: the
// chain is rebuilt on arrival by the same code that was imaged.
#pragma once

#include <string>

struct lua_State;

namespace sojourn::sandbox::strong {

// Installs the strong runtime in L's globals: the coroutine wrappers, agent.go (a peer without an
// entry yields to the top; with an entry it calls the agent.go that was there, weak semantics)
// and agent.checkpoint(). Creates the `agent` table when there is none. Lua errors are raised.
void open_strong_api(lua_State* L);

// A new coroutine that will call the function at the top of L's stack (popped). Anchored in L's
// registry so that it survives any collection, and it travels with the arena.
lua_State* start_agent(lua_State* L);

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
// (agent.go returns true; agent.checkpoint returns true).
Step resume_agent(lua_State* co);

}  // namespace sojourn::sandbox::strong
