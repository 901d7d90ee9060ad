// A warm guest's prepared Lua state: built once in the arena with everything a run needs
// that does not depend on its request, snapshotted, and restored after each run, so that a
// run starts from the same bytes as the one before it without building a state.
#pragma once

#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox::guest {

// Builds the prepared state in the installed (pristine) arena and copies the arena's used
// span. Only for guests without the JIT: its machine code lives outside the arena, where a
// restore cannot take it back. Does nothing otherwise or when building fails (runs then
// make a fresh state each, as before).
void prepare_warm_state(bool allow_jit);

// A weak run (what run_lua does, with the same results, errors and limits): on the prepared
// state when there is one and the run can use it, else run_lua.
Result<Value> run_weak(const RunInput& input, HostCalls* host);

// A weak agent step (run_agent's outcome, errors and limits): on the prepared state when
// there is one and the step can use it, else in a fresh state (run_agent). Either way the
// arena goes back to the snapshot after it (reset_after_run): nothing of the step remains.
Result<AgentOutcome> run_weak_agent(const RunInput& input, const AgentInput& agent, HostCalls* host);

// Before a strong step or a resume (its image holds the whole arena):
// the prepared state goes, and the arena is back to pristine.
void set_aside_warm_state();

// After an answered run: the arena back to the prepared state's snapshot (or to pristine when
// there is none), and the prepared state rebuilt if it was set aside.
void reset_after_run();

// What the prepared state costs to keep (benchmarks, tests): its snapshot's bytes, and the
// bytes the last reset_after_run wrote back into the arena; how many weak steps ran the agent
// chunk kept compiled in the snapshot (a chunk met twice in a row is kept, keyed by its name
// and whole text), and whether one is kept now.
struct WarmStateStats {
  std::size_t snapshot_bytes = 0;
  std::size_t last_reset_bytes = 0;
  std::uint64_t agent_chunk_hits = 0;
  bool agent_chunk_kept = false;
};
WarmStateStats warm_state_stats();

}  // namespace sojourn::sandbox::guest
