-- expect: sandbox_refused refused by the sandbox: pattern too complex for a subject of 120000 bytes
-- limits: wall=100
-- No quantifier, yet O(subject x pattern) steps in C, where the count hook never fires.
return string.match(string.rep('a', 120000), string.rep('a', 60000) .. 'b')
