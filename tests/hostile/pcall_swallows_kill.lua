-- expect: cpu_limit CPU limit of 100000 instructions exceeded
-- limits: cpu=100000
while true do
  pcall(function() while true do end end)
  xpcall(function() while true do end end, function(e) return e end)
end
