-- expect: memory_limit memory limit of 8388608 bytes exceeded
-- limits: cpu=1000000000 memory=8388608
local s = 'x'
while true do s = s .. s end
