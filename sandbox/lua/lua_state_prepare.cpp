// Preparing a pooled state (lua_state_pool.hpp): the libraries, the restricted environment,
// the pool's own tables (the library list with the zeros list, the globals as a list, the chunk
// cache), the function copying the globals, the registry slots and the housekeeping function
// with its snapshot of the registry.
#include <algorithm>
#include <initializer_list>
#include <iterator>
#include <string_view>
#include <string>

#include <lua.hpp>

#include "sandbox/lua/lua_agent.hpp"
#include "sandbox/lua/lua_env.hpp"
#include "sandbox/lua/lua_state_pool_internal.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace sojourn::sandbox::detail {

namespace state_pool {

namespace {

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

}  // namespace

int prepare_protected(lua_State* L) {
  auto& state = *static_cast<PooledState*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  open_restricted_env(L, false);
  open_require_remote(L);
  lua::register_library(L, LUA_GLOBALSINDEX);
  prepare_agent_api(L);  // each agent step's `agent` table holds these (open_agent_api)
  lua_createtable(L, 6, 0);  // 1: the pool's own tables
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
  lua_pushliteral(L, "_G");
  lua_rawseti(L, 1, kPoolGlobalsKey);
  lua_pushboolean(L, 0);  // no chunk yet (false, never nil: the table keeps its shape)
  lua_rawseti(L, 1, kPoolLastChunk);
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

namespace {

// The library tables a chunk may name to call one of their fields. None of their functions
// returns a library table it was not given (string, math: strings and numbers; table: the
// caller's tables' contents; coroutine: threads and what the caller's coroutines pass;
// node.call: values made from the reply).
constexpr std::string_view kCallOnlyLibraries[] = {"string", "table", "math", "coroutine", "node"};
// The global functions a chunk may name freely: none returns a table it was not given, and
// none runs code that is not the caller's (getmetatable is not here: getmetatable("") is a
// decoy whose __index is `string`; nor _G, nor require_remote, whose module is another text).
constexpr std::string_view kPlainFunctions[] = {
    "assert", "collectgarbage", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal",
    "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall",
};

template <std::size_t N>
bool listed(const std::string_view (&names)[N], std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

}  // namespace

// The size of begin_pooled_run's copy of the globals (no allocation: counting only), and
// which prepared globals the proof of reaches_no_library restricts: every global is either a
// listed library (call_only), a listed plain function or a string, number or boolean (free),
// or banned (a chunk naming it gets the library comparison), so that a global added to the
// environment later is banned until it is looked at.
void record_sizes(PooledState& state) {
  lua_State* L = state.L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.globals_ref);
  const int globals = lua_gettop(L);
  state.global_count = count_entries(L, globals);
  state.call_only_globals.clear();
  state.banned_globals.clear();
  lua_pushnil(L);
  while (lua_next(L, globals) != 0) {
    const int type = lua_type(L, -1);
    if (lua_type(L, -2) == LUA_TSTRING) {
      std::size_t len = 0;
      const char* text = lua_tolstring(L, -2, &len);
      const std::string_view name(text, len);
      if (type == LUA_TTABLE && listed(kCallOnlyLibraries, name) && !lua_rawequal(L, -1, globals)) {
        state.call_only_globals.emplace_back(name);
      } else if (!(type == LUA_TFUNCTION && listed(kPlainFunctions, name)) && type != LUA_TSTRING &&
                 type != LUA_TNUMBER && type != LUA_TBOOLEAN) {
        state.banned_globals.emplace_back(name);
      }
    }  // a key that is not a string is no name: only _G (banned) reaches its value
    lua_pop(L, 1);
  }
  lua_settop(L, globals - 1);
}

}  // namespace state_pool

void refill_library_list(PooledState& state) {
  lua_State* L = state.L;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, state.pool_ref);
  lua_rawgeti(L, 1, state_pool::kPoolLibraries);
  lua_rawgeti(L, 1, state_pool::kPoolZeros);
  state_pool::fill_library_list(L, 2, 3);
  lua_settop(L, 0);
}

}  // namespace sojourn::sandbox::detail
