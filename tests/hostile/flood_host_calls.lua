-- expect: cpu_limit CPU limit of 5000 instructions exceeded
-- limits: cpu=5000
for i = 1, 1e9 do node.call('echo', i, ('x'):rep(100)) end
