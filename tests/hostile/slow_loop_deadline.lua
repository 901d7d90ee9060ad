-- expect: deadline wall-clock deadline of 100 ms exceeded
-- limits: cpu=1000000000000 wall=100
while true do local s = string.rep('x', 64) end
