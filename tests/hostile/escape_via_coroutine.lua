-- expect: lua_error Lua error: nothing reached
local co = coroutine.create(function(...)
  local env = getfenv and getfenv(0)
  coroutine.yield(env, coroutine.running())
  return debug, jit, require
end)
local ok, env = coroutine.resume(co)
if not ok or env ~= nil then error('reached a thread environment', 0) end
local ok2, a, b, c = coroutine.resume(co)
if a ~= nil or b ~= nil or c ~= nil then error('reached a library in a coroutine', 0) end
local wrapped = coroutine.wrap(function() return os, io, package end)
if wrapped() ~= nil then error('reached a library through wrap', 0) end
error('nothing reached', 0)
