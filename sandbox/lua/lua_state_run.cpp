// A run on a pooled state (lua_state_pool.hpp): its start (the copy of the globals, the
// decoy string metatable), the chunk cache, and after it the check of the library tables and
// the reset of the registry and the globals (the housekeeping function, our own Lua text).
#include <cstdint>
#include <string_view>

#include <lua.hpp>

#include "sandbox/lua/lua_state_pool_internal.hpp"

namespace sojourn::sandbox::detail {

namespace state_pool {

// The pool's housekeeping after a run, in Lua because `for ... in next, t` walks a table's slots
// directly, where lua_next looks each key up again. Our own text, loaded in mode "t"; no run's
// code is called (no library's contents are read before it is known to have no metatable,
// and every read is raw). Its upvalues are the prepared `next`, `rawequal`, `type` and
// `getmetatable`, the library list, the registry, the snapshot of the registry, the set of
// per-run tables and the snapshot's size; the function
// lives in the registry under an integer key (a rawgeti, where a string key cost a hashed
// lookup per use).
//
// 1. Each library (unless the argument is false: the run provably could not reach one,
//    reaches_no_library): no metatable (`getmetatable` answers nil only for a table without one; a
//    metatable with a __metatable field answers that field, never nil; the prepared builtin,
//    a fast function, where five C API calls per library cost more), then compared with its copy: a copy that holds no table or userdata (entry[4]
//    false: functions, numbers and strings only) with `~=`, which calls no __eq there (Lua
//    calls it only when both sides are tables, or both userdata); the others with rawequal.
//    Then the keys whose prepared value is 0 (the zeros list) are compared again by their
//    inverses: `==` finds -0 equal to 0, 1/-0 is -inf. Any difference returns false: the state is
//    never shown to another run.
// 2. (Unless the second argument is false: no C code wrote to the registry during the run,
//    RunContext::registry_writes.) The registry back as prepared, in one walk of the registry: a key the snapshot lacks is
//    removed, a prepared value changed is set again, a per-run table a run filled (or gave a
//    metatable) is replaced by a new empty one (one still empty is kept: nothing of the run is
//    in it). The walk counts the prepared keys it met; when a run removed one (fewer than the
//    snapshot holds), a walk of the snapshot puts back what is missing. The registry has no
//    metatable, and neither have these tables.
extern const std::string_view kHousekeepingSource =
    "local next, rawequal, type, getmetatable, libraries, zeros, registry, snapshot, emptied, prepared_keys = ...\n"
    "return function(check_libraries, walk_registry)\n"
    "  for i = 1, check_libraries and #libraries or 0 do\n"
    "    local entry = libraries[i]\n"
    "    local library, copy, n = entry[1], entry[2], 0\n"
    "    if getmetatable(library) ~= nil then return false end\n"
    "    if entry[4] then\n"
    "      for k, v in next, library do\n"
    "        if not rawequal(copy[k], v) then return false end\n"
    "        n = n + 1\n"
    "      end\n"
    "    else\n"
    "      for k, v in next, library do\n"
    "        if copy[k] ~= v then return false end\n"
    "        n = n + 1\n"
    "      end\n"
    "    end\n"
    "    if n ~= entry[3] then return false end\n"
    "  end\n"
    "  for j = 1, check_libraries and #zeros or 0, 3 do\n"
    "    local library, copy, k = zeros[j], zeros[j + 1], zeros[j + 2]\n"
    "    if 1 / library[k] ~= 1 / copy[k] then return false end\n"
    "  end\n"
    "  if not walk_registry then return true end\n"
    "  local met = 0\n"
    "  for k, v in next, registry do\n"
    "    local prepared = snapshot[k]\n"
    "    if prepared == nil then\n"
    "      registry[k] = nil\n"
    "    else\n"
    "      met = met + 1\n"
    "      if emptied[k] then\n"
    "        if type(v) ~= 'table' or next(v) ~= nil or getmetatable(v) ~= nil then registry[k] = {} end\n"
    "      elseif not rawequal(v, prepared) then\n"
    "        registry[k] = prepared\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  if met ~= prepared_keys then\n"
    "    for k, v in next, snapshot do\n"
    "      if registry[k] == nil then\n"
    "        if emptied[k] then registry[k] = {} else registry[k] = v end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return true\n"
    "end\n";

// Whether every library table holds what it held once prepared and has no metatable (the
// count hook is off: the check is bounded by the prepared sizes, it stops at the first key
// the copy lacks); then, when they do, the registry reset and the globals: the run's kept, or
// the prepared ones back as the thread's globals. One protected call for all of it. With
// neither the library check nor the registry walk to do, no Lua code runs here.
int check_and_reset(lua_State* L) {
  auto& work = *static_cast<Housekeeping*>(lua_touserdata(L, 1));
  const PooledState& state = *work.state;
  lua_settop(L, 0);
  if (work.check_libraries || work.walk_registry) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, state.housekeeping_ref);
    if (!lua_isfunction(L, 1)) return luaL_error(L, "pooled state without its snapshot");
    lua_pushboolean(L, work.check_libraries ? 1 : 0);
    lua_pushboolean(L, work.walk_registry ? 1 : 0);
    lua_call(L, 2, 1);
    if (lua_toboolean(L, -1) == 0) return 0;  // a run changed a library table: never shown to another
    lua_settop(L, 0);
  }
  reset_globals(L, work);
  return 0;
}

// Only API calls that neither allocate nor raise (raw reads, comparisons, lua_replace of the
// globals), on an empty stack: safe outside a protected call.
void reset_globals(lua_State* L, Housekeeping& work) {
  const PooledState& state = *work.state;
  lua_settop(L, 0);
  // A state given back with no run since its last reset still has the globals it had then
  // installed (the prepared ones, or a kept table no run has had since): what was kept stays
  // kept.
  if (!work.ran) {
    work.globals_kept = state.globals_kept;
    work.reusable = true;
    return;
  }
  // The run's globals kept for the next run (left installed), or the prepared ones back. Kept
  // only when the run provably wrote none (keep_globals) and, as a guard, they still have no
  // metatable, their raw `_G` is still themselves (the key read from the pool's table: no
  // string interned here) and they are not the prepared globals; anything else and the next
  // run gets a fresh copy.
  bool keep = false;
  if (work.keep_globals) {
    lua_pushvalue(L, LUA_GLOBALSINDEX);  // 1
    if (lua_istable(L, 1) && lua_getmetatable(L, 1) == 0) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, state.pool_ref);  // 2
      lua_rawgeti(L, 2, kPoolGlobalsKey);                 // 3: "_G"
      if (lua_type(L, 3) == LUA_TSTRING) {
        lua_rawget(L, 1);                                        // 3: globals._G, raw
        lua_rawgeti(L, LUA_REGISTRYINDEX, state.globals_ref);  // 4: the prepared globals
        keep = lua_rawequal(L, 3, 1) != 0 && lua_rawequal(L, 4, 1) == 0;
      }
    }
    lua_settop(L, 0);
  }
  if (!keep) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, state.globals_ref);
    lua_replace(L, LUA_GLOBALSINDEX);
  }
  work.globals_kept = keep;
  work.reusable = true;
}

}  // namespace state_pool

using state_pool::kPoolChunks;
using state_pool::kPoolGlobalsList;
using state_pool::kPoolLastChunk;

namespace {

// Bounds on the chunk cache a state keeps between runs.
constexpr std::uint32_t kMaxCachedChunks = 32;
constexpr std::size_t kMaxCachedSourceBytes = std::size_t{16} << 10;

// Pushes the pool's table's entry `slot` (kPoolChunks, kPoolGlobalsList).
void push_pool_table(lua_State* L, const PooledState& state, int slot) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.pool_ref);
  lua_rawgeti(L, -1, slot);
  lua_remove(L, -2);
}

// Whether the decoy at `decoy` is as begin_pooled_run left it: a table with no metatable whose
// only key is __index (whose value is set again for each run). Anything else a run did to it
// (a key added or removed, a metatable) makes a new decoy.
bool decoy_reusable(lua_State* L, int decoy) {
  if (!lua_istable(L, decoy)) return false;
  if (lua_getmetatable(L, decoy) != 0) {
    lua_pop(L, 1);
    return false;
  }
  lua_pushnil(L);
  if (lua_next(L, decoy) == 0) return false;
  lua_pop(L, 1);  // the value
  std::size_t len = 0;
  const char* key = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : nullptr;
  const bool only_index = key != nullptr && std::string_view(key, len) == "__index";
  if (lua_next(L, decoy) != 0) {
    lua_pop(L, 2);
    return false;
  }
  return only_index;
}

}  // namespace

void begin_pooled_run(lua_State* L, const PooledState& state) {
  // The last run's globals, which it provably did not write, are still installed
  // (check_and_reset left them); and when that run could not reach the decoy either, it is
  // still {__index = string} as that run's start left it: nothing to do.
  if (state.globals_kept && state.decoy_intact) return;
  lua_checkstack(L, 12);
  const int prepared = lua_gettop(L) + 1;
  if (state.globals_kept) {
    lua_pushvalue(L, LUA_GLOBALSINDEX);
  } else if (state.copy_ref > 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, state.copy_ref);
    lua_call(L, 0, 1);  // the copy (library tables are shared, checked after the run)
  } else {
    push_pool_table(L, state, kPoolGlobalsList);
    lua_rawgeti(L, LUA_REGISTRYINDEX, state.globals_ref);
    const int prepared_globals = lua_gettop(L);
    lua_createtable(L, 0, state.global_count);
    const int copy = lua_gettop(L);
    for (int slot = 1; slot < 2 * state.global_count; slot += 2) {
      lua_rawgeti(L, prepared, slot);      // the key
      lua_rawgeti(L, prepared, slot + 1);  // the value: library tables are shared, checked after the run
      if (lua_rawequal(L, -1, prepared_globals)) {
        lua_pop(L, 1);
        lua_pushvalue(L, copy);  // _G is the run's own globals
      }
      lua_rawset(L, copy);
    }
  }
  const int env = lua_gettop(L);
  // What getmetatable("") shows is a decoy {__index = this run's string}: the real metatable
  // is never shown. The last run's decoy is kept when it is still exactly that shape (only
  // its __index, set again here, can differ); otherwise a new one. When the last run provably
  // could not reach it (decoy_intact), it is exactly that already: the string library is the
  // same shared table in every run's globals.
  if (state.string_meta_ref > 0 && !state.decoy_intact) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, state.string_meta_ref);
    const int meta = lua_gettop(L);
    lua_getfield(L, meta, "__metatable");
    const int decoy = lua_gettop(L);
    if (!decoy_reusable(L, decoy)) {
      lua_settop(L, meta);
      lua_createtable(L, 0, 1);
      lua_pushvalue(L, -1);
      lua_setfield(L, meta, "__metatable");
    }
    lua_getfield(L, env, "string");
    lua_setfield(L, -2, "__index");
  }
  lua_settop(L, env);
  lua_replace(L, LUA_GLOBALSINDEX);
  lua_settop(L, prepared - 1);
}

namespace {

// Keeps the function on top of the stack as the last chunk of scanned_source (kPoolLastChunk).
void remember_last_chunk(lua_State* L, PooledState& state, const char* chunk_name) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.pool_ref);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, kPoolLastChunk);
  lua_pop(L, 1);
  state.last_chunk_name.assign(chunk_name);
  state.last_chunk_ready = true;
}

}  // namespace

int push_cached_chunk(lua_State* L, PooledState& state, const char* chunk_name, std::string_view source,
                      bool source_scanned) {
  lua_checkstack(L, 6);
  if (source_scanned && state.last_chunk_ready && state.last_chunk_name == chunk_name) {
    push_pool_table(L, state, kPoolLastChunk);
    if (lua_isfunction(L, -1)) {
      lua_pushvalue(L, LUA_GLOBALSINDEX);
      lua_setfenv(L, -2);
      return 0;
    }
    lua_pop(L, 1);
  }
  const bool cacheable = source.size() <= kMaxCachedSourceBytes;
  if (cacheable) {
    push_pool_table(L, state, kPoolChunks);
    const int cache = lua_gettop(L);
    lua_getfield(L, cache, chunk_name);
    if (lua_istable(L, -1)) {
      // Interned strings are equal only when their bytes are: the whole text is compared.
      lua_pushlstring(L, source.data(), source.size());
      lua_rawget(L, -2);
      if (lua_isfunction(L, -1)) {
        lua_pushvalue(L, LUA_GLOBALSINDEX);
        lua_setfenv(L, -2);
        lua_replace(L, cache);
        lua_settop(L, cache);
        if (source_scanned) remember_last_chunk(L, state, chunk_name);
        return 0;
      }
      lua_pop(L, 1);
    }
    lua_settop(L, cache - 1);
  }
  const int status = luaL_loadbufferx(L, source.data(), source.size(), chunk_name, "t");
  if (status != 0 || !cacheable) return status;
  const int fn = lua_gettop(L);
  if (state.cached_chunks >= kMaxCachedChunks) {
    // Start over rather than track use: a new table in the pool's table (the registry and its
    // snapshot hold the pool's table, unchanged).
    lua_rawgeti(L, LUA_REGISTRYINDEX, state.pool_ref);
    lua_newtable(L);
    lua_rawseti(L, -2, kPoolChunks);
    lua_pop(L, 1);
    state.cached_chunks = 0;
  }
  push_pool_table(L, state, kPoolChunks);
  lua_getfield(L, -1, chunk_name);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, chunk_name);
  }
  lua_pushlstring(L, source.data(), source.size());
  lua_pushvalue(L, fn);
  lua_rawset(L, -3);
  lua_settop(L, fn);
  ++state.cached_chunks;
  if (source_scanned) remember_last_chunk(L, state, chunk_name);
  return 0;
}

}  // namespace sojourn::sandbox::detail
