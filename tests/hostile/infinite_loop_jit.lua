-- expect: deadline wall-clock deadline of 200 ms exceeded
-- limits: cpu=1000000000000 wall=200
-- jit: on
-- levels: process
-- With the JIT on, the compiled loop never reaches the count hook: only the process
-- jail's kill stops it (the trusted level would spin forever, so it is not run there).
local n = 0
while true do n = n + 1 end
