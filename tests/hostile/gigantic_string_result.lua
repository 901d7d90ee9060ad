-- expect: memory_limit memory limit of 16777216 bytes exceeded
-- Each result fits, all of them together do not.
local s = ('x'):rep(4000000)
return s, s .. 'a', s .. 'b', s .. 'c', s .. 'd'
