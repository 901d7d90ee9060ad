-- expect: lua_error Lua error at c_stack_recursion:4: stack overflow (too many nested C calls)
-- string.gsub calls back into Lua, which calls string.gsub again: the C stack, not
-- LuaJIT's own, would overflow first.
local function g() return (string.gsub('a', 'a', g)) end
return g()
