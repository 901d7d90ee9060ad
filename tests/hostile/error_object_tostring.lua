-- expect: lua_error Lua error: (error object is a table value)
-- The host never calls an error object's __tostring (it would run outside every budget).
error(setmetatable({}, {__tostring = function() while true do end end}))
