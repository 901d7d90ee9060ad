// Private to the Lua state pool (lua_state_pool.cpp: the pool's bookkeeping;
// lua_state_prepare.cpp: preparing a state and its library lists; lua_state_run.cpp: the start
// of a run, the chunk cache, and the check and reset after it). Not installed, included by these
// three files only.
#pragma once

#include <string_view>

#include "sandbox/lua/lua_state_pool.hpp"

struct lua_State;

namespace sojourn::sandbox::detail::state_pool {

// The pool's own tables, in one table at the registry slot pool_ref (every registry key is
// visited by each run's reset: one key for all of them, where one key each cost ~260 Ir per
// run apiece). The snapshot of the registry and the set of per-run tables are reachable only
// as the housekeeping function's upvalues.
inline constexpr int kPoolChunks = 1;       // the chunk cache: chunk name -> {source -> function}
inline constexpr int kPoolGlobalsList = 2;  // the prepared globals as a list {k1, v1, k2, v2, ...}
inline constexpr int kPoolLibraries = 3;    // {library, its copy, its size, holds references} each
inline constexpr int kPoolZeros = 4;        // {library, its copy, a key whose value is 0, ...}
inline constexpr int kPoolGlobalsKey = 5;   // the string "_G": the kept globals' guard, read without interning
inline constexpr int kPoolLastChunk = 6;    // the chunk of the last text scanned (PooledState::last_chunk_name), or false

// The pool's housekeeping function's text (lua_state_run.cpp), loaded once per state by
// prepare_protected.
extern const std::string_view kHousekeepingSource;

// Prepares the state passed as light userdata (a PooledState) in protected mode: the
// libraries, the restricted environment, the pool's tables, the registry slots and the
// housekeeping function (lua_state_prepare.cpp).
int prepare_protected(lua_State* L);

// The size of begin_pooled_run's copy of the globals (no allocation: counting only).
void record_sizes(PooledState& state);

// What check_and_reset is given and answers.
struct Housekeeping {
  const PooledState* state;
  bool check_libraries = true;  // false: the run provably reached no library table
  bool walk_registry = true;    // false: no C code wrote to the registry during the run
  bool keep_globals = false;   // true: the run provably wrote no global (return_pooled_state)
  bool ran = true;             // false: no run since the state's last reset (PooledState::run_since_reset)
  bool reusable = false;
  bool globals_kept = false;   // answered: the run's globals were kept for the next run
};

// Run in protected mode (lua_cpcall) with a Housekeeping as light userdata: the check of the
// library tables and the reset of the registry and the globals (lua_state_run.cpp).
int check_and_reset(lua_State* L);
// Its last part, the globals (kept, or the prepared ones back), called directly when neither
// the library check nor the registry walk is to run: it neither allocates nor raises.
void reset_globals(lua_State* L, Housekeeping& work);

}  // namespace sojourn::sandbox::detail::state_pool
