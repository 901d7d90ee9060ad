local t = node.call('kv.get', 'xs'); local s = 0
for _, v in ipairs(t) do s = s + v end; return s
