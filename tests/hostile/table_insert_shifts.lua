-- expect: cpu_limit CPU limit of 10000000 instructions exceeded
-- Each insert at the front shifts the whole table in C: ~1e9 moves in ~20,000 instructions.
local t = {}
for i = 1, 100000 do t[i] = i end
for i = 1, 10000 do table.insert(t, 1, i) end
return #t
