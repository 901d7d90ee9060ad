-- expect: lua_error Lua error at bytecode_load:4: attempt to call local 'compile' (a nil value)
-- Bytecode crashes LuaJIT: no loader is reachable to feed it one.
local compile = load or loadstring or dofile or loadfile
return compile('\27LJ\2\0\0\0\0')
