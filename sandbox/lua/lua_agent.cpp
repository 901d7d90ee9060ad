// agent.go/receive/log and require_remote: what agent code asks of the node, as host calls,
// with agent.go implemented as a sticky kill so that no pcall can keep the agent from leaving.
#include "sandbox/lua/lua_agent.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <lua.hpp>

#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/lua/lua_source_scan.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace sojourn::sandbox::detail {

namespace {

// The registry key of the modules require_remote has loaded in this run.
constexpr const char* kModulesKey = "sojourn.remote_modules";
// The registry key of a prepared state's agent functions (go, wait, receive, log), made once
// so that each pooled agent step's new `agent` table holds the same, registered, functions.
constexpr const char* kAgentFunctionsKey = "sojourn.agent_functions";

[[noreturn]] void raise_message(lua_State* L, const std::string& message) {
  luaL_where(L, 1);
  lua_pushlstring(L, message.data(), message.size());
  lua_concat(L, 2);
  lua_error(L);
  std::abort();  // lua_error does not return
}

// A host call from Lua: arguments are converted to an array table, the reply pushed back.
Value host_call(lua_State* L, std::string_view name, int first_arg) {
  RunContext& ctx = run_context(L);
  if (ctx.host == nullptr) raise_message(L, std::string(name) + " is not available here");
  check_c_stack(L);
  Result<Value> args = lua::pop_as_array(L, lua_gettop(L) - first_arg + 1, {"args", ctx.limits.memory_bytes});
  if (!args.ok()) {
    if (args.error().code == Errc::memory_limit) raise_limit(L, args.error());
    raise_message(L, args.error().message);
  }
  Result<Value> reply = errors::internal("no reply");
  try {
    reply = ctx.host->call(name, *args);
  } catch (const std::exception& e) {
    reply = make_error(Errc::service_failed, std::string(name) + " failed: " + e.what());
  }
  if (!reply.ok()) raise_message(L, reply.error().message);
  return std::move(*reply);
}

// Ends a weak step once agent.go or agent.wait set its stop: a yield straight back to the
// step's C code when called in the step's own coroutine where it may yield (not inside a
// coroutine of the agent's, a sort comparator, a gsub callback), else the sticky kill's error,
// re-raised at every instruction whatever catches it. Either way no Lua code of the step runs
// after it.
int leave_step(lua_State* L, RunContext& ctx) {
  if (L == ctx.agent_thread && lua_isyieldable(L) != 0) return lua_yield(L, 0);
  raise_kill(L);
}

int agent_go(lua_State* L) {
  std::size_t peer_len = 0;
  const char* peer = luaL_checklstring(L, 1, &peer_len);
  std::size_t entry_len = 0;
  const char* entry = luaL_checklstring(L, 2, &entry_len);
  if (peer_len == 0) luaL_argerror(L, 1, "empty peer address");
  if (entry_len == 0) luaL_argerror(L, 2, "empty entry point name");
  RunContext& ctx = run_context(L);
  if (ctx.kill != Errc::ok) raise_kill(L);
  ctx.go_peer.assign(peer, peer_len);
  ctx.go_entry.assign(entry, entry_len);
  ctx.kill = Errc::agent_moving;  // sticky: a pcall around agent.go cannot keep the agent here
  return leave_step(L, ctx);
}

// agent.wait(entry): the step ends here and the agent stays, asleep, until a message
// arrives; then `entry` is called (agent.receive gives the message).
int agent_wait(lua_State* L) {
  std::size_t entry_len = 0;
  const char* entry = luaL_checklstring(L, 1, &entry_len);
  if (entry_len == 0) luaL_argerror(L, 1, "empty entry point name");
  RunContext& ctx = run_context(L);
  if (ctx.kill != Errc::ok) raise_kill(L);
  ctx.go_peer.clear();
  ctx.go_entry.assign(entry, entry_len);
  ctx.kill = Errc::agent_moving;
  return leave_step(L, ctx);
}

int agent_receive(lua_State* L) {
  lua_settop(L, 0);
  Value message = host_call(L, "agent.receive", 1);
  lua::push_value(L, message);
  return 1;
}

int agent_log(lua_State* L) {
  // Every argument as text, the way print would show it.
  const int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; ++i) {
    if (i > 1) luaL_addchar(&b, '\t');
    const int t = lua_type(L, i);
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
      lua_pushvalue(L, i);
      luaL_addvalue(&b);
    } else if (t == LUA_TBOOLEAN) {
      luaL_addstring(&b, lua_toboolean(L, i) != 0 ? "true" : "false");
    } else {
      luaL_addstring(&b, lua_typename(L, t));
    }
  }
  luaL_pushresult(&b);
  lua_replace(L, 1);
  lua_settop(L, 1);
  host_call(L, "agent.log", 1);
  return 0;
}

int require_remote(lua_State* L) {
  std::size_t name_len = 0;
  const char* name = luaL_checklstring(L, 1, &name_len);
  lua_settop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, kModulesKey);
  lua_pushvalue(L, 1);
  lua_rawget(L, 2);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);  // stack: name, modules

  lua_pushvalue(L, 1);
  Value module = host_call(L, "code.require", 3);
  if (!module.is_table() || !module.get("source").is_string()) {
    raise_message(L, "code.require gave no source for module " + std::string(name, name_len));
  }
  const std::string source = module.get("source").as_string();
  const Value chunk_value = module.get("chunk");
  const std::string chunk = "=" + (chunk_value.is_string() ? chunk_value.as_string() : std::string(name, name_len));
  if (!source.empty() && source.front() == '\x1b') {
    raise_message(L, "refused by the sandbox: bytecode is not accepted");
  }
  if (lua::has_cdata_literal(source)) raise_message(L, cdata_refused_error().message);
  check_c_stack(L);
  const int status = luaL_loadbufferx(L, source.data(), source.size(), chunk.c_str(), "t");
  if (status == LUA_ERRMEM) raise_limit(L, limit_error(Errc::memory_limit, run_context(L).limits));
  if (status != 0) lua_error(L);
  lua::register_chunk(L, chunk, source);  // its functions may travel in the agent's state
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  reraise_pending_kill(L);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -2);
  lua_rawset(L, 2);  // modules[name] = result
  return 1;
}

}  // namespace

namespace {

constexpr luaL_Reg kAgentFunctions[] = {
    {"go", agent_go}, {"wait", agent_wait}, {"receive", agent_receive}, {"log", agent_log}, {nullptr, nullptr}};
constexpr int kAgentFunctionCount = 4;

using ::sojourn::detail::Slot;
using ::sojourn::detail::TableData;
using ::sojourn::detail::TableRef;

// Few enough values that a push need not poll the run's limits (lua_value_push.cpp polls
// every 1024).
constexpr std::size_t kMaxDirectFacts = 256;

bool is_scalar(const Slot& s) { return s.index() <= 4; }

void push_scalar(lua_State* L, const Slot& s) {
  switch (s.index()) {
    case 0: lua_pushnil(L); break;
    case 1: lua_pushboolean(L, std::get<bool>(s) ? 1 : 0); break;
    case 2: lua_pushnumber(L, static_cast<lua_Number>(std::get<std::int64_t>(s))); break;
    case 3: lua_pushnumber(L, std::get<double>(s)); break;
    default: {
      const std::string& text = std::get<std::string>(s);
      lua_pushlstring(L, text.data(), text.size());
      break;
    }
  }
}

bool all_scalars(const TableData& t) {
  for (const Slot& s : t.array) {
    if (!is_scalar(s)) return false;
  }
  for (const auto& [key, value] : t.map) {
    if (!is_scalar(key) || !is_scalar(value)) return false;
  }
  return true;
}

// Fills the table at `table` with the scalars of `array` (holes left out).
void fill_array(lua_State* L, int table, const std::vector<Slot>& array) {
  for (std::size_t i = 0; i < array.size(); ++i) {
    if (array[i].index() == 0) continue;
    push_scalar(L, array[i]);
    lua_rawseti(L, table, static_cast<int>(i + 1));
  }
}

// Fills the table at `table` with `t`'s entries whose key and value are scalars.
void fill_scalars(lua_State* L, int table, const TableData& t) {
  fill_array(L, table, t.array);
  for (const auto& [key, value] : t.map) {
    if (key.index() == 0 || value.index() == 0) continue;
    push_scalar(L, key);
    push_scalar(L, value);
    lua_rawset(L, table);
  }
}

// The step's facts as the node makes them (id, home, here, ..., itinerary: scalars, and tables
// of scalars each met once), pushed into a table with room for the agent functions too. The
// generic push (lua::push_value) builds three memo tables for sharing, cycles and functions,
// none of which facts have: most of open_agent_api's cost. False, with nothing pushed, for
// any other shape (the generic push then).
bool push_facts(lua_State* L, const Value& info) {
  if (!info.is_table()) return false;
  const auto& tables = info.graph()->tables;
  const std::uint32_t root_index = std::get<TableRef>(info.slot()).index;
  const TableData& root = tables[root_index];
  for (const Slot& s : root.array) {
    if (!is_scalar(s)) return false;
  }
  std::size_t values = root.array.size() + 2 * root.map.size();
  std::vector<std::uint32_t> nested;
  for (const auto& [key, value] : root.map) {
    if (!is_scalar(key)) return false;
    if (is_scalar(value)) continue;
    if (value.index() != 5) return false;  // a function: the generic push rebuilds it
    const std::uint32_t index = std::get<TableRef>(value).index;
    if (index == root_index || !all_scalars(tables[index])) return false;
    for (const std::uint32_t seen : nested) {
      if (seen == index) return false;  // shared: the generic push keeps it one table
    }
    nested.push_back(index);
    values += tables[index].array.size() + 2 * tables[index].map.size();
  }
  if (values > kMaxDirectFacts) return false;
  lua_checkstack(L, 6);
  lua_createtable(L, static_cast<int>(root.array.size()), static_cast<int>(root.map.size()) + kAgentFunctionCount);
  const int table = lua_gettop(L);
  fill_array(L, table, root.array);
  for (const auto& [key, value] : root.map) {
    if (key.index() == 0 || value.index() == 0) continue;
    push_scalar(L, key);
    if (is_scalar(value)) {
      push_scalar(L, value);
    } else {
      const TableData& t = tables[std::get<TableRef>(value).index];
      lua_createtable(L, static_cast<int>(t.array.size()), static_cast<int>(t.map.size()));
      fill_scalars(L, lua_gettop(L), t);
    }
    lua_rawset(L, table);
  }
  return true;
}

}  // namespace

void open_agent_api(lua_State* L, const Value& info) {
  if (!push_facts(L, info)) lua::push_value(L, info.is_table() ? info : Value::table());
  const int agent = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, kAgentFunctionsKey);
  const bool prepared = lua_istable(L, -1);
  for (const luaL_Reg* f = kAgentFunctions; f->name != nullptr; ++f) {
    if (prepared) {
      lua_getfield(L, agent + 1, f->name);
    } else {
      lua_pushcfunction(L, f->func);
    }
    lua_setfield(L, agent, f->name);
  }
  lua_settop(L, agent);
  lua_setfield(L, LUA_GLOBALSINDEX, "agent");
}

void prepare_agent_api(lua_State* L) {
  lua_createtable(L, 0, 1);  // {agent = functions}: register_library names them agent.go, ...
  lua_createtable(L, 0, 4);
  for (const luaL_Reg* f = kAgentFunctions; f->name != nullptr; ++f) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, kAgentFunctionsKey);
  lua_setfield(L, -2, "agent");
  lua::register_library(L, -1);
  lua_pop(L, 1);
}

void open_require_remote(lua_State* L) {
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, kModulesKey);
  lua_pushcfunction(L, require_remote);
  lua_setfield(L, LUA_GLOBALSINDEX, "require_remote");
}

}  // namespace sojourn::sandbox::detail
