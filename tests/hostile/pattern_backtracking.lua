-- expect: sandbox_refused refused by the sandbox: pattern too complex for a subject of 100000 bytes
return string.rep('a', 100000):find('(a*)*b')
