-- expect: ok
-- Cycles and shared tables travel intact; both levels give the same graph.
local t = {name = 'root'}
t.self = t
t.children = {{parent = t}, {parent = t}}
t.children[1].sibling = t.children[2]
t.children[2].sibling = t.children[1]
return t, t.children
