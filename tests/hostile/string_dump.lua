-- expect: lua_error Lua error at string_dump:3: attempt to call local 'dump' (a nil value)
local dump = string.dump or ('').dump or getmetatable('').__index.dump
return dump(function() end)
