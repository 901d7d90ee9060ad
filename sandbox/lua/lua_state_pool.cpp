// The pool of prepared trusted lua_States (lua_state_pool.hpp). Why reuse is safe: a run gets
// its own copy of the globals (the prepared ones are kept in the registry, which scripts cannot
// reach without the debug library); the library tables it shares are compared with their
// prepared contents after the run, and a state whose libraries changed is thrown away; the
// decoy string metatable is new each run (the real one is never shown); and the registry is
// put back as it was prepared after each run. Only runs that ended cleanly give their state
// back; a kill, an error, a limit or a refused allocation throws the state away.
#include "sandbox/lua/lua_state_pool.hpp"

#include <algorithm>
#include <deque>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

#include <lua.hpp>

#include "sandbox/lua/lua_agent.hpp"
#include "sandbox/lua/lua_env.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace sojourn::sandbox::detail {

namespace {

// The pool's own tables, in one table at the registry slot pool_ref (every registry key is
// visited by each run's reset: one key for all of them, where one key each cost ~260 Ir per
// run apiece). The snapshot of the registry and the set of per-run tables are reachable only
// as the housekeeping function's upvalues.
constexpr int kPoolChunks = 1;       // the chunk cache: chunk name -> {source -> function}
constexpr int kPoolGlobalsList = 2;  // the prepared globals as a list {k1, v1, k2, v2, ...}
constexpr int kPoolLibraries = 3;    // {library, its copy, its size, holds references} each
constexpr int kPoolZeros = 4;        // {library, its copy, a key whose value is 0, ...}

// The pool's housekeeping after a run, in Lua because `for ... in next, t` walks a table's slots
// directly, where lua_next looks each key up again. Our own text, loaded in mode "t"; no run's
// code is called (no library's contents are read before it is known to have no metatable,
// and every read is raw). Its upvalues are the prepared `next`, `rawequal`, `type` and
// `getmetatable`, the library list, the registry, the snapshot of the registry, the set of
// per-run tables and the snapshot's size; the function
// lives in the registry under an integer key (a rawgeti, where a string key cost a hashed
// lookup per use).
//
// 1. Each library: no metatable (`getmetatable` answers nil only for a table without one; a
//    metatable with a __metatable field answers that field, never nil; the prepared builtin,
//    a fast function, where five C API calls per library cost more), then compared with its copy: a copy that holds no table or userdata (entry[4]
//    false: functions, numbers and strings only) with `~=`, which calls no __eq there (Lua
//    calls it only when both sides are tables, or both userdata); the others with rawequal.
//    Then the keys whose prepared value is 0 (the zeros list) are compared again by their
//    inverses: `==` finds -0 equal to 0, 1/-0 is -inf. Any difference returns false: the state is
//    never shown to another run.
// 2. The registry back as prepared, in one walk of the registry: a key the snapshot lacks is
//    removed, a prepared value changed is set again, a per-run table a run filled (or gave a
//    metatable) is replaced by a new empty one (one still empty is kept: nothing of the run is
//    in it). The walk counts the prepared keys it met; when a run removed one (fewer than the
//    snapshot holds), a walk of the snapshot puts back what is missing. The registry has no
//    metatable, and neither have these tables.
constexpr std::string_view kHousekeepingSource =
    "local next, rawequal, type, getmetatable, libraries, zeros, registry, snapshot, emptied, prepared_keys = ...\n"
    "return function()\n"
    "  for i = 1, #libraries do\n"
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
    "  for j = 1, #zeros, 3 do\n"
    "    local library, copy, k = zeros[j], zeros[j + 1], zeros[j + 2]\n"
    "    if 1 / library[k] ~= 1 / copy[k] then return false end\n"
    "  end\n"
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

// Bounds on what a state keeps between runs.
constexpr std::uint32_t kMaxRunsPerState = 4096;
constexpr std::uint32_t kMaxCachedChunks = 32;
constexpr std::size_t kMaxCachedSourceBytes = std::size_t{16} << 10;
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

int count_entries(lua_State* L, int table) {
  int count = 0;
  lua_pushnil(L);
  while (lua_next(L, table) != 0) {
    lua_pop(L, 1);
    ++count;
  }
  return count;
}

// Pushes a copy of the table at `from`, which has `size` entries.
void push_table_copy(lua_State* L, int from, int size) {
  lua_createtable(L, 0, size);
  const int copy = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, from) != 0) {
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    lua_rawset(L, copy);
    lua_pop(L, 1);
  }
}

// Whether the table at `table` holds a table or userdata value (check_libraries then compares
// its entries with rawequal).
bool holds_references(lua_State* L, int table) {
  bool found = false;
  lua_pushnil(L);
  while (lua_next(L, table) != 0) {
    const int type = lua_type(L, -1);
    found = found || type == LUA_TTABLE || type == LUA_TUSERDATA || type == LUA_TLIGHTUSERDATA;
    lua_pop(L, 1);
  }
  return found;
}

// Fills the table at `list` with what each library table (a table among the globals, _G
// aside) holds now, to check it after every run: {library, its copy, its size, holds
// references} each; and the table at `zeros` with {library, its copy, key} for each key
// whose value is the number 0 (or -0): `==` and rawequal find 0 and -0 equal, the
// housekeeping function tells them apart by their inverses (inf and -inf). Both are
// emptied first.
void fill_library_list(lua_State* L, int list, int zeros) {
  for (int i = static_cast<int>(lua_objlen(L, list)); i > 0; --i) {
    lua_pushnil(L);
    lua_rawseti(L, list, i);
  }
  for (int i = static_cast<int>(lua_objlen(L, zeros)); i > 0; --i) {
    lua_pushnil(L);
    lua_rawseti(L, zeros, i);
  }
  int libraries = 0;
  int zero_slots = 0;
  lua_pushnil(L);
  while (lua_next(L, LUA_GLOBALSINDEX) != 0) {
    if (lua_istable(L, -1) && !lua_rawequal(L, -1, LUA_GLOBALSINDEX)) {
      const int library = lua_gettop(L);
      const int size = count_entries(L, library);
      lua_createtable(L, 4, 0);
      lua_pushvalue(L, library);
      lua_rawseti(L, -2, 1);
      push_table_copy(L, library, size);
      lua_rawseti(L, -2, 2);
      lua_pushinteger(L, size);
      lua_rawseti(L, -2, 3);
      lua_pushboolean(L, holds_references(L, library) ? 1 : 0);
      lua_rawseti(L, -2, 4);
      lua_pushnil(L);
      while (lua_next(L, library) != 0) {
        if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 0) {
          lua_pushvalue(L, library);
          lua_rawseti(L, zeros, ++zero_slots);
          lua_rawgeti(L, -3, 2);  // the copy
          lua_rawseti(L, zeros, ++zero_slots);
          lua_pushvalue(L, -2);
          lua_rawseti(L, zeros, ++zero_slots);
        }
        lua_pop(L, 1);
      }
      lua_rawseti(L, list, ++libraries);
    }
    lua_pop(L, 1);
  }
}

bool is_plain_name(const char* text, std::size_t len) {
  if (len == 0) return false;
  for (std::size_t i = 0; i < len; ++i) {
    const char c = text[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// Pushes a function that returns a new copy of the prepared globals (a global holding the
// globals themselves, `_G`, holds the copy), made by one table constructor whose keys are
// constants: the table is sized once and each field is one store, where the C API's copy
// cost a lookup and a call per field (an eighth of a pooled run, callgrind). Pushes nothing
// and returns false when a global's name is not a plain name (begin_pooled_run then copies
// from C).
bool push_copy_function(lua_State* L) {
  std::string fields;
  std::string selves;
  lua_pushnil(L);
  while (lua_next(L, LUA_GLOBALSINDEX) != 0) {
    std::size_t len = 0;
    const char* name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : nullptr;
    if (name == nullptr || !is_plain_name(name, len)) {
      lua_pop(L, 2);
      return false;
    }
    const std::string key = "[\"" + std::string(name, len) + "\"]";
    if (lua_rawequal(L, -1, LUA_GLOBALSINDEX)) {
      selves += "  t" + key + " = t\n";
    } else {
      fields += "    " + key + " = p" + key + ",\n";
    }
    lua_pop(L, 1);
  }
  const std::string source = "local p = ...\nreturn function()\n  local t = {\n" + fields + "  }\n" + selves + "  return t\nend\n";
  if (luaL_loadbufferx(L, source.data(), source.size(), "=pool", "t") != 0) lua_error(L);
  lua_pushvalue(L, LUA_GLOBALSINDEX);
  lua_call(L, 1, 1);
  return true;
}

// A registry slot with an integer key holding the value on top of the stack (popped).
int ref_top(lua_State* L) {
  const int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (ref <= 0) luaL_error(L, "pooled state without a registry slot");
  return ref;
}

int prepare_protected(lua_State* L) {
  auto& state = *static_cast<PooledState*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  open_restricted_env(L, false);
  open_require_remote(L);
  lua::register_library(L, LUA_GLOBALSINDEX);
  prepare_agent_api(L);  // each agent step's `agent` table holds these (open_agent_api)
  lua_createtable(L, 4, 0);  // 1: the pool's own tables
  lua_newtable(L);  // 2
  lua_newtable(L);  // 3
  fill_library_list(L, 2, 3);
  lua_rawseti(L, 1, kPoolZeros);
  lua_rawseti(L, 1, kPoolLibraries);
  // The globals as a list, so that each run's copy is made without lua_next.
  lua_newtable(L);
  int slot = 0;
  lua_pushnil(L);
  while (lua_next(L, LUA_GLOBALSINDEX) != 0) {
    lua_pushvalue(L, -2);
    lua_rawseti(L, 2, ++slot);
    lua_rawseti(L, 2, ++slot);
  }
  lua_rawseti(L, 1, kPoolGlobalsList);
  lua_newtable(L);
  lua_rawseti(L, 1, kPoolChunks);
  state.pool_ref = ref_top(L);
  if (push_copy_function(L)) state.copy_ref = ref_top(L);
  lua_pushvalue(L, LUA_GLOBALSINDEX);
  state.globals_ref = ref_top(L);
  lua_pushliteral(L, "");
  if (lua_getmetatable(L, -1) != 0) state.string_meta_ref = ref_top(L);
  lua_pop(L, 1);
  lua_pushboolean(L, 0);  // the housekeeping function's slot, filled once the snapshot is made
  state.housekeeping_ref = ref_top(L);

  lua_newtable(L);  // 1: snapshot
  lua_newtable(L);  // 2: tables emptied each run
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX) != 0) {
    if (lua_istable(L, -1)) {
      lua_pushnil(L);
      if (lua_next(L, -2) == 0) {  // empty once prepared: a per-run table (require_remote's modules)
        lua_pushvalue(L, -2);
        lua_pushboolean(L, 1);
        lua_rawset(L, 2);
      } else {
        lua_pop(L, 2);
      }
    }
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, 1);
  }
  const int prepared_keys = count_entries(L, 1);
  if (luaL_loadbufferx(L, kHousekeepingSource.data(), kHousekeepingSource.size(), "=pool", "t") != 0) lua_error(L);
  for (const char* name : {"next", "rawequal", "type", "getmetatable"}) lua_getfield(L, LUA_GLOBALSINDEX, name);
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.pool_ref);
  lua_rawgeti(L, -1, kPoolLibraries);
  lua_rawgeti(L, -2, kPoolZeros);
  lua_remove(L, -3);
  lua_pushvalue(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushinteger(L, prepared_keys);
  lua_call(L, 10, 1);
  lua_pushvalue(L, -1);
  lua_rawseti(L, LUA_REGISTRYINDEX, state.housekeeping_ref);
  lua_rawseti(L, 1, state.housekeeping_ref);  // the snapshot's value for that slot
  lua_settop(L, 0);
  return 0;
}

// The size of begin_pooled_run's copy of the globals (no allocation: counting only).
void record_sizes(PooledState& state) {
  lua_State* L = state.L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.globals_ref);
  state.global_count = count_entries(L, lua_gettop(L));
  lua_pop(L, 1);
}

// What check_and_reset is given and answers.
struct Housekeeping {
  const PooledState* state;
  bool reusable = false;
};

// Whether every library table holds what it held once prepared and has no metatable (the
// count hook is off: the check is bounded by the prepared sizes, it stops at the first key
// the copy lacks); then, when they do, the registry reset and the prepared globals back as
// the thread's globals. One protected call for all of it.
int check_and_reset(lua_State* L) {
  auto& work = *static_cast<Housekeeping*>(lua_touserdata(L, 1));
  const PooledState& state = *work.state;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.housekeeping_ref);
  if (!lua_isfunction(L, 1)) return luaL_error(L, "pooled state without its snapshot");
  lua_call(L, 0, 1);
  if (lua_toboolean(L, -1) == 0) return 0;  // a run changed a library table: never shown to another
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.globals_ref);
  lua_replace(L, LUA_GLOBALSINDEX);
  lua_settop(L, 0);
  work.reusable = true;
  return 0;
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

void return_pooled_state(PooledStatePtr state) {
  lua_State* L = state->L;
  RunContext& ctx = *state->ctx;
  lua_sethook(L, nullptr, 0, 0);
  lua_settop(L, 0);
  ctx.host = nullptr;
  ctx.abort = nullptr;
  ctx.deferred_chunk_name = {};  // the run's text, registered or not, is gone with the run
  ctx.deferred_chunk_source = {};
  ctx.byte_cap = std::max(kHousekeepingBytes, ctx.bytes_in_use + kHousekeepingBytes);
  if (++state->runs >= kMaxRunsPerState) return;
  Housekeeping work{state.get()};
  if (lua_cpcall(L, check_and_reset, &work) != 0 || !work.reusable || ctx.kill != Errc::ok) return;
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

void begin_pooled_run(lua_State* L, const PooledState& state) {
  lua_checkstack(L, 12);
  const int prepared = lua_gettop(L) + 1;
  if (state.copy_ref > 0) {
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
  // its __index, set again here, can differ); otherwise a new one.
  if (state.string_meta_ref > 0) {
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

int push_cached_chunk(lua_State* L, PooledState& state, const char* chunk_name, std::string_view source) {
  lua_checkstack(L, 6);
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
  return 0;
}

void refill_library_list(PooledState& state) {
  lua_State* L = state.L;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.pool_ref);
  lua_rawgeti(L, 1, kPoolLibraries);
  lua_rawgeti(L, 1, kPoolZeros);
  fill_library_list(L, 2, 3);
  lua_settop(L, 0);
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
