-- stats: a module published for code-on-demand. A node fetches it and runs it on its own
-- data:  sojourn fetch HOST:PORT stats --args '["readings"]'
local key = ...
local values = node.call("kv.get", key or "readings") or {}
local n, sum, min, max = 0, 0, math.huge, -math.huge
for _, v in ipairs(values) do
  n = n + 1
  sum = sum + v
  if v < min then min = v end
  if v > max then max = v end
end
if n == 0 then return { count = 0 } end
return { count = n, mean = sum / n, min = min, max = max, node = node.call("node.info").name }
