// The pool of prepared trusted lua_States (lua_state_pool.hpp). Why reuse is safe: a run gets
// its own copy of the globals (the prepared ones are kept in the registry, which scripts cannot
// reach without the debug library); the library tables it shares are compared with their
// prepared contents after the run, and a state whose libraries changed is thrown away; the
// decoy string metatable is set up again for each run that follows one that could reach it
// (the real one is never shown); and the registry is
// put back as it was prepared after each run. Only runs that ended cleanly give their state
// back; a kill, an error, a limit or a refused allocation throws the state away.
// Here: the pool's bookkeeping (taking, returning, bounds). Preparing a state is in
// lua_state_prepare.cpp; a run's start, the chunk cache and the check and reset after a run
// in lua_state_run.cpp.
#include "sandbox/lua/lua_state_pool.hpp"

#include <algorithm>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include <lua.hpp>

#include "sandbox/lua/lua_env.hpp"
#include "sandbox/lua/lua_source_scan.hpp"
#include "sandbox/lua/lua_state_pool_internal.hpp"

namespace sojourn::sandbox::detail {

using state_pool::check_and_reset;
using state_pool::Housekeeping;
using state_pool::prepare_protected;
using state_pool::record_sizes;
using state_pool::reset_globals;

namespace {

// Bounds on what a state keeps between runs.
constexpr std::uint32_t kMaxRunsPerState = 4096;
// Past this growth over the prepared size a returned state is collected; still past the
// second bound after that (cached chunks, fragmentation) it is thrown away.
constexpr std::size_t kCollectAboveBytes = std::size_t{128} << 10;
constexpr std::size_t kDiscardAboveBytes = std::size_t{1} << 20;
// The allocator's cap while a state is prepared or reset (no run's limits apply then).
constexpr std::size_t kHousekeepingBytes = std::size_t{8} << 20;
// Idle states kept, all principals together; the oldest goes first.
constexpr std::size_t kMaxIdleStates = 16;

struct Pool {
  std::mutex mutex;
  std::deque<PooledStatePtr> idle;  // most recently returned at the back
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: runs may end on threads that outlive main
  return *p;
}

}  // namespace

PooledState::~PooledState() {
  if (L != nullptr) lua_close(L);
}

bool pool_serves(std::string_view principal, bool allow_jit, std::uint64_t memory_bytes) {
  return !principal.empty() && !allow_jit && memory_bytes >= kPoolMinMemoryBytes &&
         installed_lua_heap() == nullptr && test_globals() == nullptr;
}

PooledStatePtr take_pooled_state(std::string_view principal) {
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    for (auto it = p.idle.rbegin(); it != p.idle.rend(); ++it) {
      if ((*it)->principal == principal) {
        PooledStatePtr state = std::move(*it);
        p.idle.erase(std::next(it).base());
        return state;
      }
    }
  }
  auto state = std::make_unique<PooledState>();
  state->principal = principal;
  state->ctx = std::make_unique<RunContext>();
  RunContext& ctx = *state->ctx;
  ctx.limits.memory_bytes = kHousekeepingBytes;
  ctx.byte_cap = kHousekeepingBytes;
  state->arena = std::make_unique_for_overwrite<std::byte[]>(kArenaBytes);
  ctx.arena = state->arena.get();
  ctx.block_cache = std::make_unique<SmallBlockCache>();  // before any block is allocated
  state->L = lua_newstate(capped_alloc, &ctx);
  if (state->L == nullptr) return nullptr;
  if (lua_cpcall(state->L, prepare_protected, state.get()) != 0) return nullptr;
  record_sizes(*state);
  state->baseline_bytes = ctx.bytes_in_use;
  return state;
}

bool reaches_no_library(const PooledState& state, std::string_view source) {
  return lua::names_tables_only_in_calls(source, state.call_only_globals, state.banned_globals);
}

void return_pooled_state(PooledStatePtr state, bool libraries_reachable, bool registry_written, bool keep_globals) {
  lua_State* L = state->L;
  RunContext& ctx = *state->ctx;
  // The reset below runs Lua code (the housekeeping function) only for the library check or
  // the registry walk: then no hook; otherwise the hook is parked, and the next run's
  // arm_count_hook does not rewrite LuaJIT's dispatch table twice per run.
  if (libraries_reachable || registry_written) {
    lua_sethook(L, nullptr, 0, 0);
  } else {
    park_count_hook(L);
  }
  lua_settop(L, 0);
  ctx.host = nullptr;
  ctx.abort = nullptr;
  ctx.deferred_chunk_name = {};  // the run's text, registered or not, is gone with the run
  ctx.deferred_chunk_source = {};
  ctx.byte_cap = std::max(kHousekeepingBytes, ctx.bytes_in_use + kHousekeepingBytes);
  const bool ran = state->run_since_reset;
  state->run_since_reset = false;
  // Only a run that provably could not reach the decoy leaves it intact; a state given back
  // with no run keeps what it had.
  const bool decoy_intact = ran ? !libraries_reachable : state->decoy_intact;
  state->decoy_intact = false;  // until the reset succeeds
  if (++state->runs >= kMaxRunsPerState) return;
  Housekeeping work{state.get(), libraries_reachable, registry_written, keep_globals && !libraries_reachable && !registry_written};
  work.ran = ran;
  if (libraries_reachable || registry_written) {
    if (lua_cpcall(L, check_and_reset, &work) != 0 || !work.reusable || ctx.kill != Errc::ok) return;
  } else {
    reset_globals(L, work);  // no Lua code to run, nothing that raises: no protected call
    if (!work.reusable || ctx.kill != Errc::ok) return;
  }
  state->globals_kept = work.globals_kept;
  state->decoy_intact = decoy_intact;
  if (ctx.bytes_in_use > state->baseline_bytes + kCollectAboveBytes) lua_gc(L, LUA_GCCOLLECT, 0);
  if (ctx.bytes_in_use > state->baseline_bytes + kDiscardAboveBytes) return;
  std::vector<PooledStatePtr> doomed;  // closed after the lock is released
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    p.idle.push_back(std::move(state));
    while (p.idle.size() > kMaxIdleStates) {
      doomed.push_back(std::move(p.idle.front()));
      p.idle.pop_front();
    }
  }
}

std::size_t idle_pooled_states() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  return p.idle.size();
}

void clear_state_pool() {
  std::deque<PooledStatePtr> doomed;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    doomed.swap(p.idle);
  }
}

std::string describe_registry(lua_State* L) {
  std::vector<std::string> keys;
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX) != 0) {
    std::string key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : std::string("#") + lua_typename(L, lua_type(L, -2));
    if (lua_type(L, -2) == LUA_TNUMBER) key = "#" + std::to_string(lua_tonumber(L, -2));
    if (lua_istable(L, -1)) {  // the chunk cache, meant to grow, is inside the pool's table
      int count = 0;
      lua_pushnil(L);
      while (lua_next(L, -2) != 0) {
        lua_pop(L, 1);
        ++count;
      }
      key += "(" + std::to_string(count) + ")";
    }
    keys.push_back(std::move(key));
    lua_pop(L, 1);
  }
  std::sort(keys.begin(), keys.end());
  std::string out;
  for (const std::string& key : keys) out += key + " ";
  return out;
}

}  // namespace sojourn::sandbox::detail
