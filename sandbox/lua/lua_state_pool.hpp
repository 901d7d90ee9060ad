// Prepared lua_States for trusted runs (run_lua on the node): the libraries, the restricted
// environment and the library table are built once per state, and each run gets fresh copies
// of the globals, so that nothing a run does reaches the next one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sandbox/lua/lua_limits.hpp"

struct lua_State;

namespace sojourn::sandbox::detail {

// One prepared state and what the pool knows of it. The state is closed (through the
// allocator, whose context and arena are members) before the rest is freed.
struct PooledState {
  PooledState() = default;
  PooledState(const PooledState&) = delete;
  PooledState& operator=(const PooledState&) = delete;
  ~PooledState();

  std::unique_ptr<RunContext> ctx;
  std::unique_ptr<std::byte[]> arena;
  lua_State* L = nullptr;
  std::string principal;          // the only principal whose runs it serves
  std::size_t baseline_bytes = 0;  // bytes_in_use once prepared
  std::uint32_t runs = 0;
  std::uint32_t cached_chunks = 0;
  int global_count = 0;  // the prepared globals' entries: the size of each run's copy
  std::string scanned_source;  // the last text that passed refused_input's cdata scan here
  // Whether scanned_source names the library tables only to call one of their fields and
  // names no other way to them (reaches_no_library): a run of it that rebuilt no function
  // from a value cannot have written a library table, and its state goes back without the
  // library comparison.
  bool scanned_source_confined = false;
  // Whether the chunk compiled from scanned_source holds no GSET (lua::writes_no_global);
  // learned at its first compile on this state (scanned_source_global_scan_done).
  bool scanned_source_writes_no_global = false;
  bool scanned_source_global_scan_done = false;
  // The chunk compiled from scanned_source under this name is in the pool's table
  // (kPoolLastChunk): a run of the same text under the same name takes it from there, with
  // no string interned (the text was already compared with scanned_source in C++). Cleared
  // whenever scanned_source changes.
  std::string last_chunk_name;
  bool last_chunk_ready = false;
  // Whether the last run's globals table is kept for the next run instead of a fresh copy (it
  // stays installed as the thread's globals while the state is idle): set only after a run
  // that provably wrote no global and nothing else that reaches its globals
  // (return_pooled_state's `keep_globals`).
  bool globals_kept = false;
  // Whether the decoy getmetatable("") shows is exactly as the last run's begin_pooled_run
  // left it ({__index = string}, no metatable): that run provably could not reach it (its text
  // passed reaches_no_library, which bans `getmetatable`, and no code from outside the text
  // ran). The next run then leaves it as it is.
  bool decoy_intact = false;
  // Set when a run starts on the state, cleared when it is given back: a state given back
  // untouched (a refused input) keeps what it had.
  bool run_since_reset = false;
  // The prepared globals a chunk may name only as `NAME.FIELD(` (the library tables), and
  // those it may not name at all for the proof (every other global but the plain functions
  // known to hand out no library: _G, getmetatable, require_remote, anything new).
  std::vector<std::string> call_only_globals;
  std::vector<std::string> banned_globals;
  // Registry slots (integer keys, luaL_ref) of what every run reads: the pool's own tables
  // (the chunk cache, the globals as a list, the library list), the prepared globals, the
  // function copying them (0 when the C copy is used), the housekeeping function run when the
  // state is returned, and the real string metatable (0 when none).
  int pool_ref = 0;
  int globals_ref = 0;
  int copy_ref = 0;
  int housekeeping_ref = 0;
  int string_meta_ref = 0;
};

// The longest text a pooled state keeps as scanned (scanned_source).
inline constexpr std::size_t kMaxScannedSourceBytes = std::size_t{16} << 10;
using PooledStatePtr = std::unique_ptr<PooledState>;

// Runs of at least this memory limit use the pool; below it a run keeps its fresh state, so
// that a tight limit fails exactly where it always did.
inline constexpr std::uint64_t kPoolMinMemoryBytes = std::uint64_t{256} << 10;

// Whether a run may take a pooled state: a principal is named, the JIT stays off, no LuaHeap
// is installed (the guest) and no test seam adds globals.
bool pool_serves(std::string_view principal, bool allow_jit, std::uint64_t memory_bytes);

// An idle prepared state of `principal`, or a new one; null when no state can be made (the
// caller then runs in a fresh state and reports why).
PooledStatePtr take_pooled_state(std::string_view principal);

// After a run that ended cleanly (no error, no kill, no limit hit): the state goes back to
// the pool unless it has served kMaxRunsPerState runs, changed a library table (or set a
// metatable on one), or its memory stays grown past its bound after a collection. Before it is idle, the thread's globals go back to the prepared
// ones and the registry to what it was once prepared (keys added by runs removed, per-run
// tables emptied). Any other run's state is simply destroyed, never returned.
// `libraries_reachable` false: the run's own code provably could not reach a library table
// (its text passed reaches_no_library and it rebuilt no function from a value), so the
// library comparison is skipped; everything else of the reset is the same.
// `registry_written` false: no C code wrote to the registry during the run (RunContext::
// registry_writes, and a text that cannot call require_remote), so the walk that puts the
// registry back is skipped too.
// `keep_globals` true: the run's text holds no global write (writes_no_global), could not
// name `_G` (reaches_no_library) and no code from outside the text ran (no function pushed,
// no registry write, not an agent): its globals table still holds exactly the prepared
// globals, and the next run on this state uses it again instead of a fresh copy (after a
// cheap check: no metatable, `_G` still itself; otherwise a copy).
void return_pooled_state(PooledStatePtr state, bool libraries_reachable = true, bool registry_written = true,
                         bool keep_globals = false);

// Whether a run of `source` on `state` can only have read the library tables: the text names
// each library only as `NAME.FIELD(` and names no other global that reaches one (lua_source_scan.hpp,
// names_tables_only_in_calls). Whatever else holds a library would have to come from outside
// the text: functions rebuilt from values (arguments, node.call replies) are counted in the
// run's context and make the comparison run.
bool reaches_no_library(const PooledState& state, std::string_view source);

// Called in protected mode at the start of a run on a pooled state: installs a fresh copy
// of the globals as the thread's globals (`_G` the copy; the library tables are shared, and
// checked when the state is returned), unless the last run's are kept (globals_kept: still
// installed), and sets up the decoy for getmetatable("") unless the last run provably could
// not reach it (decoy_intact).
void begin_pooled_run(lua_State* L, const PooledState& state);

// Pushes the chunk compiled from `source` under `chunk_name` (a "=name"), from this state's
// cache when the same name and the same text (compared in full, as Lua strings are interned)
// were compiled before, with the current globals as its environment. Returns luaL_load's status
// (the error message pushed instead of a function when not 0). Text mode only: the cache holds
// loaded functions, never bytecode.
// `source_scanned`: source is the state's scanned_source (compared in full by the caller).
int push_cached_chunk(lua_State* L, PooledState& state, const char* chunk_name, std::string_view source,
                      bool source_scanned = false);

// For tests: takes what the state's library tables hold now as what they were prepared with
// (a test that gave one a field the environment has none of today, such as a 0).
void refill_library_list(PooledState& state);
// For tests: idle states in the pool, and emptying it.
std::size_t idle_pooled_states();
void clear_state_pool();
// For tests: the registry's keys of a pooled state (a sorted description), so that a test can
// see that a run left nothing behind.
std::string describe_registry(lua_State* L);

}  // namespace sojourn::sandbox::detail
