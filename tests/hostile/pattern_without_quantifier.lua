-- expect: sandbox_refused refused by the sandbox: pattern too complex for a subject of 120000 bytes
-- limits: wall=2000
-- No quantifier, yet O(subject x pattern) steps in C, where the count hook never fires: it
-- ran 19 s past its wall limit. The wall limit leaves an emulated microVM room to get there.
return string.match(string.rep('a', 120000), string.rep('a', 60000) .. 'b')
