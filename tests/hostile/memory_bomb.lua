-- expect: memory_limit memory limit of 8388608 bytes exceeded
-- limits: cpu=1000000000 memory=8388608
local t = {}
for i = 1, 1e9 do t[i] = {i, tostring(i)} end
