-- courier: a mobile agent that travels to the first node of its itinerary and waits
-- there, asleep, for a message (`sojourn send ID '{"deliver":...}'`); then it stores the
-- message in that node's kv store and goes home with a receipt.
local courier = {}

function courier.start(state)
  state.origin = agent.here
  agent.go(agent.itinerary[1], "wait_for_orders")
end

function courier.wait_for_orders(state)
  local order = agent.receive()
  if order == nil then
    agent.wait("wait_for_orders")  -- the step ends; a message wakes the agent here
  end
  node.call("kv.put", "delivery", order.deliver)
  state.receipt = { delivered = order.deliver, at = agent.here }
  agent.go(state.origin, "home")
end

function courier.home(state)
  return state.receipt
end

return courier
