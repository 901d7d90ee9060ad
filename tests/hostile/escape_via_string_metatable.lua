-- expect: lua_error Lua error: nothing reached
-- The metatable strings really use cannot be changed: getmetatable('') is a decoy.
local mt = getmetatable('')
mt.__index = function(_, key) return _G[key] or key end
mt.__metatable = nil
if ('abc'):upper() ~= 'ABC' then error('string methods changed', 0) end
if ('x').os ~= nil or ('x').require ~= nil then error('reached a library through a string', 0) end
error('nothing reached', 0)
