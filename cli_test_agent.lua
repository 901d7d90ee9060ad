local M = {}
function M.start(s) s.sum = 0; return M.visit(s) end
function M.visit(s)
  s.sum = s.sum + node.call('kv.get', 'price')
  agent.log('sum ' .. s.sum)
  if agent.itinerary[1] then agent.go(agent.itinerary[1], 'visit') end
  return s.sum * s.factor
end
return M
