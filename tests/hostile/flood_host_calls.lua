-- expect: cpu_limit CPU limit of 20000 instructions exceeded
-- limits: cpu=20000
for i = 1, 1e9 do node.call('echo', i, ('x'):rep(100)) end
