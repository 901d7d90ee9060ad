-- expect: ok
-- A Lua closure travels as its source text and upvalues (never bytecode); both levels
-- give the same value.
local count = 0
local function bump() count = count + 1 return count end
bump()
return {bump = bump, n = count}
