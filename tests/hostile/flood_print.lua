-- expect: cpu_limit CPU limit of 100000 instructions exceeded
-- limits: cpu=100000
for i = 1, 1e9 do print(('x'):rep(1000), i) end
