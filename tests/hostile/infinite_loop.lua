-- expect: cpu_limit CPU limit of 100000 instructions exceeded
-- limits: cpu=100000
while true do end
