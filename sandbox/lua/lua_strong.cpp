// The strong runtime (lua_strong.hpp). The go sentinel is a private table kept in the registry
// and as an upvalue of the runtime's closures; agent code can neither see nor forge it.
#include "sandbox/lua/lua_strong.hpp"

#include <string_view>

#include <lua.hpp>

namespace sojourn::sandbox::strong {

namespace {

constexpr const char* kSentinelKey = "sojourn.strong.go";
constexpr const char* kAgentsKey = "sojourn.strong.agents";
constexpr const char* kMainKey = "sojourn.strong.main";

// Runs with the sentinel as its only argument. A go travels as a yield of (GO, what, peer):
// a wrapper that sees it come out of an inner resume yields it on, and when it is resumed in
// turn re-resumes the inner coroutine with what it was given.
constexpr const char kRuntime[] = R"lua(
local GO = ...
local co_create, co_resume, co_yield, co_status = coroutine.create, coroutine.resume, coroutine.yield, coroutine.status
local error, select, type, tostring = error, select, type, tostring
local unpack = unpack

local function pass(co, ok, ...)
  if ok and select('#', ...) > 0 and (...) == GO then
    return pass(co, co_resume(co, co_yield(...)))
  end
  return ok, ...
end
local function resume(co, ...)
  return pass(co, co_resume(co, ...))
end
local function unwrap(ok, ...)
  if not ok then error((...), 0) end
  return ...
end
coroutine.resume = resume
coroutine.wrap = function(f)
  local co = co_create(f)
  return function(...) return unwrap(resume(co, ...)) end
end

local agent = agent
if type(agent) ~= 'table' then agent = {} ; _G.agent = agent end
local weak_go = agent.go
agent.go = function(peer, entry)
  if entry ~= nil then
    if weak_go == nil then error('agent.go with an entry is not available here', 2) end
    return weak_go(peer, entry)
  end
  if type(peer) ~= 'string' or peer == '' then error("bad argument #1 to 'go' (peer address expected)", 2) end
  -- The host answers a refusal (something that cannot travel) with its reason: nothing was sent.
  local refused = co_yield(GO, 'go', peer)
  if refused ~= nil then error(refused, 2) end
  return true
end
agent.checkpoint = function()
  local refused = co_yield(GO, 'checkpoint')
  if refused ~= nil then error(refused, 2) end
  return true
end
)lua";

}  // namespace

void open_strong_api(lua_State* L) {
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, kSentinelKey);
  if (luaL_loadbuffer(L, kRuntime, sizeof kRuntime - 1, "=strong") != 0) lua_error(L);
  lua_insert(L, -2);
  lua_call(L, 1, 0);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, kAgentsKey);
  lua_pushthread(L);
  lua_setfield(L, LUA_REGISTRYINDEX, kMainKey);
}

lua_State* main_thread(lua_State* co) {
  lua_getfield(co, LUA_REGISTRYINDEX, kMainKey);
  lua_State* L = lua_tothread(co, -1);
  lua_pop(co, 1);
  return L;
}

lua_State* start_agent(lua_State* L, int nargs) {
  lua_State* co = lua_newthread(L);
  lua_getfield(L, LUA_REGISTRYINDEX, kAgentsKey);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);  // agents[co] = true
  lua_pop(L, 1);      // the agents table
  lua_insert(L, -(nargs + 2));  // the thread below the function and its arguments
  lua_xmove(L, co, nargs + 1);
  lua_pop(L, 1);  // the thread (anchored in the registry)
  return co;
}

Step resume_agent(lua_State* co, const std::string* refusal) {
  Step step;
  const bool yielded = lua_status(co) == LUA_YIELD;
  const int base = yielded ? 0 : lua_gettop(co) - 1;
  int nargs = base;
  if (yielded) {
    lua_settop(co, 0);  // what the stop yielded
    nargs = 0;
    if (refusal != nullptr) {
      lua_pushlstring(co, refusal->data(), refusal->size());
      nargs = 1;
    }
  }
  const int status = lua_resume(co, nargs);
  if (status == 0) {
    step.stop = Stop::finished;
    step.results = lua_gettop(co);
    return step;
  }
  if (status != LUA_YIELD) {
    const char* message = lua_tostring(co, -1);
    step.error = message != nullptr ? message : "(error object is not a string)";
    return step;
  }
  lua_getfield(co, LUA_REGISTRYINDEX, kSentinelKey);
  const bool ours = lua_gettop(co) >= 2 && lua_rawequal(co, 1, -1) != 0;
  lua_pop(co, 1);
  if (!ours) {
    step.error = "attempt to yield across the agent's entry (a yield outside any coroutine of the agent)";
    return step;
  }
  const char* what = lua_tostring(co, 2);
  if (what != nullptr && std::string_view(what) == "go" && lua_type(co, 3) == LUA_TSTRING) {
    step.stop = Stop::went;
    step.peer = lua_tostring(co, 3);
  } else {
    step.stop = Stop::checkpoint;
  }
  return step;
}

}  // namespace sojourn::sandbox::strong
