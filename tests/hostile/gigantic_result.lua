-- expect: memory_limit memory limit of 4194304 bytes exceeded
-- limits: memory=4194304
-- 200000 numbers take 2 MB in Lua but 8 MB as Values on the way out.
local t = {}
for i = 1, 200000 do t[i] = i end
return t
