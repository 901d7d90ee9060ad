-- expect: cpu_limit CPU limit of 10000000 instructions exceeded
-- A plain find compares the needle at every position: 950,001 x 50,001 bytes in C.
return string.find(string.rep('a', 1e6), string.rep('a', 5e4) .. 'b', 1, true)
