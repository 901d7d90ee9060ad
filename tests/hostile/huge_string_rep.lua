-- expect: memory_limit memory limit of 16777216 bytes exceeded
return #string.rep('x', 2^31)
