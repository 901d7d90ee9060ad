-- expect: lua_error Lua error at escape_via_getmetatable:4: attempt to index local 'os' (a nil value)
local mt = getmetatable('')
local os = mt.os or mt.__index.os or (getmetatable(mt) or {}).os
return os.execute('id')
