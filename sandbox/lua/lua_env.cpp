// The restricted environment of a trusted run: allow-listed globals, and wrappers for every
// library function that could swallow a kill (pcall, xpcall, coroutine.resume) or nest C
// calls deep enough to overflow the C stack (tostring, table.sort, coroutines).
#include "sandbox/lua/lua_env.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>

#include <lua.hpp>

#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/lua/lua_string_guard.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace sojourn::sandbox::detail {

namespace {

// No load/loadstring/dofile/loadfile/require/module (code from strings or files), no
// getfenv/setfenv, newproxy (userdata with __gc) or gcinfo; jit and any other library
// opened by accident go too.
constexpr std::string_view kAllowedGlobals[] = {
    "_G",      "_VERSION", "assert", "collectgarbage", "coroutine", "error",    "getmetatable",
    "ipairs",  "math",     "next",   "pairs",          "pcall",     "print",    "rawequal",
    "rawget",  "rawset",   "select", "setmetatable",   "string",    "table",    "tonumber",
    "tostring", "type",    "unpack", "xpcall",
};

// No string.dump (bytecode out, and with it a way back in).
constexpr std::string_view kAllowedStringFunctions[] = {
    "byte", "char", "find", "format", "gmatch", "gsub", "len",
    "lower", "match", "rep", "reverse", "sub", "upper",
};

template <std::size_t N>
void keep_only(lua_State* L, int table, const std::string_view (&allowed)[N]) {
  lua_pushnil(L);
  while (lua_next(L, table) != 0) {
    lua_pop(L, 1);
    bool keep = false;
    if (lua_type(L, -1) == LUA_TSTRING) {
      std::size_t len = 0;
      const char* name = lua_tolstring(L, -1, &len);
      keep = std::find(std::begin(allowed), std::end(allowed), std::string_view(name, len)) != std::end(allowed);
    }
    if (!keep) {
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, table);  // clearing a visited field keeps lua_next valid
    }
  }
}

void open_library(lua_State* L, lua_CFunction opener) {
  lua_pushcfunction(L, opener);
  lua_call(L, 0, 0);
}

// Argument checks made before calling an original, so that their errors name the caller's
// line (an error raised by the original, called from C, carries no position).
void check_nothing(lua_State* /*L*/) {}
void check_any(lua_State* L) { luaL_checkany(L, 1); }
void check_table(lua_State* L) { luaL_checktype(L, 1, LUA_TTABLE); }
void check_function(lua_State* L) { luaL_checktype(L, 1, LUA_TFUNCTION); }
void check_coroutine(lua_State* L) { luaL_argcheck(L, lua_type(L, 1) == LUA_TTHREAD, 1, "coroutine expected"); }

// Table functions whose C loops run over the whole table (shifting for insert and remove,
// comparisons for sort, copies for concat and unpack) are charged that work first: the count
// hook does not see it.
double table_length(lua_State* L) { return lua_type(L, 1) == LUA_TTABLE ? static_cast<double>(lua_objlen(L, 1)) : 0; }
double range_length(lua_State* L, int first_arg) {
  const double first = luaL_optnumber(L, first_arg, 1);
  const double last = lua_isnoneornil(L, first_arg + 1) ? table_length(L) : luaL_checknumber(L, first_arg + 1);
  return std::max(last - first + 1, 0.0);
}
double insert_remove_cost(lua_State* L) { return 1 + table_length(L); }
double sort_cost(lua_State* L) {
  const double n = table_length(L);
  return 1 + n * std::log2(n + 2);
}
double concat_cost(lua_State* L) { return 1 + range_length(L, 3); }
double unpack_cost(lua_State* L) { return 1 + range_length(L, 2); }

// Calls the original (upvalue 1) with this call's arguments: its work charged first when it
// has a cost, the C-stack guard for functions that call back into Lua, and a kill that a
// coroutine.resume returned as `false, msg` goes on.
template <void (*kCheckArguments)(lua_State*), double (*kCost)(lua_State*) = nullptr>
int guarded_call(lua_State* L) {
  kCheckArguments(L);
  if constexpr (kCost != nullptr) charge_work(L, kCost(L));
  check_c_stack(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  reraise_pending_kill(L);
  return lua_gettop(L);
}

// coroutine.wrap returns a function that resumes from C: guard that function too.
int guarded_wrap(lua_State* L) {
  check_function(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  lua_pushcclosure(L, guarded_call<check_nothing>, 1);
  return 1;
}

void guard_field(lua_State* L, int table, const char* name, lua_CFunction guard) {
  lua_getfield(L, table, name);
  lua_pushcclosure(L, guard, 1);
  lua_setfield(L, table, name);
}

// pcall and xpcall are Lua functions around the original pcall, so that code in a coroutine
// may still yield across them. A kill caught by pcall is re-raised on return; xpcall's
// handler runs after pcall returned, as ordinary code under the count hook (LuaJIT runs a
// real handler with hooks disabled), and never after a kill.
constexpr std::string_view kProtectedCallSource =
    "local pcall, after_pcall, after_xpcall = ...\n"
    "return function(f, ...) return after_pcall(pcall(f, ...)) end,\n"
    "  function(f, handler, ...) return after_xpcall(handler, pcall(f, ...)) end\n";

int after_pcall(lua_State* L) {
  if (lua_toboolean(L, 1) == 0) reraise_pending_kill(L);
  return lua_gettop(L);
}

// (handler, ok, results or error...)
int after_xpcall(lua_State* L) {
  if (lua_toboolean(L, 2) != 0) return lua_gettop(L) - 1;
  reraise_pending_kill(L);
  check_c_stack(L);
  lua_settop(L, 3);
  lua_pushvalue(L, lua_upvalueindex(1));  // the original pcall
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 3);
  lua_call(L, 2, 2);  // an error in the handler becomes xpcall's second result
  reraise_pending_kill(L);
  lua_pushboolean(L, 0);
  lua_insert(L, -2);
  return 2;
}

// The wrappers' bytecode, dumped from their first compile in this process and loaded on
// every later run instead of parsing the source again (a twelfth of a small run's work).
// Only this process's own dump is ever loaded as bytecode: LuaJIT does not verify it, and
// code from a peer is always loaded as text.
struct ProtectedCallCode {
  std::once_flag once;
  std::string bytecode;
  std::atomic<bool> ready{false};
};

ProtectedCallCode& protected_call_code() {
  static ProtectedCallCode code;
  return code;
}

int append_dump(lua_State* /*L*/, const void* bytes, std::size_t size, void* out) {
  static_cast<std::string*>(out)->append(static_cast<const char*>(bytes), size);
  return 0;
}

void load_protected_calls(lua_State* L) {
  ProtectedCallCode& code = protected_call_code();
  if (code.ready.load(std::memory_order_acquire)) {
    if (luaL_loadbufferx(L, code.bytecode.data(), code.bytecode.size(), "=sandbox", "b") != 0) lua_error(L);
    return;
  }
  if (luaL_loadbufferx(L, kProtectedCallSource.data(), kProtectedCallSource.size(), "=sandbox", "t") != 0) {
    lua_error(L);
  }
  std::string dumped;
  if (lua_dump(L, append_dump, &dumped) == 0 && !dumped.empty()) {
    std::call_once(code.once, [&] {
      code.bytecode = std::move(dumped);
      code.ready.store(true, std::memory_order_release);
    });
  }
}

void install_protected_calls(lua_State* L, int globals) {
  load_protected_calls(L);
  lua_getfield(L, globals, "pcall");
  lua_pushcfunction(L, after_pcall);
  lua_getfield(L, globals, "pcall");
  lua_pushcclosure(L, after_xpcall, 1);
  lua_call(L, 3, 2);
  lua_setfield(L, globals, "xpcall");
  lua_setfield(L, globals, "pcall");
}

// collectgarbage("count") only: a full collection costs time the count hook does not see.
int count_only_collectgarbage(lua_State* L) {
  const char* option = luaL_optstring(L, 1, "collect");
  if (std::strcmp(option, "count") != 0) {
    return luaL_error(L, "collectgarbage(\"%s\") is not available in the sandbox", option);
  }
  double kib = lua_gc(L, LUA_GCCOUNT, 0) + lua_gc(L, LUA_GCCOUNTB, 0) / 1024.0;
  void* ud = nullptr;
  if (lua_getallocf(L, &ud) == capped_alloc) kib -= static_cast<double>(static_cast<RunContext*>(ud)->hidden_bytes) / 1024.0;
  lua_pushnumber(L, kib);
  return 1;
}

// Output has nowhere to go in the node.
int discard_print(lua_State* /*L*/) { return 0; }

Result<Value> call_host(HostCalls& host, std::string_view service, const Value& args) {
  try {
    return host.call(service, args);
  } catch (const std::exception& e) {
    return errors::service_failed(service, e.what());
  } catch (...) {  // no Lua error can pass here: the host does not touch this lua_State
    return errors::service_failed(service, "unknown exception");
  }
}

[[noreturn]] void raise_at_caller(lua_State* L, const std::string& message) {
  luaL_where(L, 1);
  lua_pushlstring(L, message.data(), message.size());
  lua_concat(L, 2);
  lua_error(L);
  std::abort();  // lua_error does not return
}

// node.call(service, ...): the node's service with the arguments as an array table.
int node_call(lua_State* L) {
  RunContext& ctx = run_context(L);
  if (ctx.host == nullptr) return luaL_error(L, "node.call is not available here");
  check_c_stack(L);
  std::size_t len = 0;
  const char* service = luaL_checklstring(L, 1, &len);
  Result<Value> args = lua::pop_as_array(L, lua_gettop(L) - 1, {"args", ctx.limits.memory_bytes});
  if (!args.ok()) {
    if (args.error().code == Errc::memory_limit) raise_limit(L, args.error());
    raise_at_caller(L, args.error().message);
  }
  Result<Value> reply = call_host(*ctx.host, std::string_view(service, len), *args);
  if (!reply.ok()) raise_at_caller(L, reply.error().message);
  lua::push_value(L, *reply);
  return 1;
}

// The string metatable is shared by every string: getmetatable("") returns a decoy whose
// __index is the (pruned) string table, so changing it changes nothing.
void protect_string_metatable(lua_State* L, int string_table) {
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, string_table);
  lua_setfield(L, -2, "__index");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 2);
}

}  // namespace

void open_restricted_env(lua_State* L, bool enable_jit) {
  open_library(L, luaopen_base);  // with coroutine
  open_library(L, luaopen_string);
  open_library(L, luaopen_table);
  open_library(L, luaopen_math);
  // The JIT engine is off until luaopen_jit runs (LuaJIT 2.1 starts with its flags clear).
  // Compiled loops never reach the count hook, so with the JIT on neither the CPU budget
  // nor the deadline nor the abort flag can stop `while true do end`: only for code the
  // node trusts fully, never for code from a peer.
  if (enable_jit) open_library(L, luaopen_jit);

  lua_pushvalue(L, LUA_GLOBALSINDEX);
  const int globals = lua_gettop(L);
  keep_only(L, globals, kAllowedGlobals);

  install_protected_calls(L, globals);
  guard_field(L, globals, "tostring", guarded_call<check_any>);
  lua_pushcfunction(L, count_only_collectgarbage);
  lua_setfield(L, globals, "collectgarbage");
  lua_pushcfunction(L, discard_print);
  lua_setfield(L, globals, "print");

  lua_getfield(L, globals, "string");
  const int string_table = lua_gettop(L);
  keep_only(L, string_table, kAllowedStringFunctions);
  guard_string_library(L, string_table);
  protect_string_metatable(L, string_table);

  guard_field(L, globals, "unpack", guarded_call<check_table, unpack_cost>);
  lua_getfield(L, globals, "table");
  const int table_library = lua_gettop(L);
  guard_field(L, table_library, "sort", guarded_call<check_table, sort_cost>);
  guard_field(L, table_library, "insert", guarded_call<check_table, insert_remove_cost>);
  guard_field(L, table_library, "remove", guarded_call<check_table, insert_remove_cost>);
  guard_field(L, table_library, "concat", guarded_call<check_table, concat_cost>);
  lua_getfield(L, globals, "coroutine");
  guard_field(L, lua_gettop(L), "resume", guarded_call<check_coroutine>);
  guard_field(L, lua_gettop(L), "wrap", guarded_wrap);

  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, node_call);
  lua_setfield(L, -2, "call");
  lua_setfield(L, globals, "node");
  lua_settop(L, globals - 1);
}

namespace {
TestGlobals g_test_globals = nullptr;  // only the test guest sets it (one run at a time there)
}  // namespace

void set_test_globals(TestGlobals open) { g_test_globals = open; }
TestGlobals test_globals() { return g_test_globals; }

}  // namespace sojourn::sandbox::detail
