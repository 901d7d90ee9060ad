-- price_hunter: a mobile agent. It visits every node of its itinerary, asks each node's
-- local catalogue (its kv store) for the price of state.item, keeps the cheapest offer,
-- and finally returns its findings, which the node it ends at reports to its home.
--   sojourn launch samples/agents/price_hunter.lua --at A --itinerary B,C --state '{"item":"disk"}' --wait
local hunter = {}

function hunter.start(state)
  state.offers = {}
  -- A closure travels with the state: its code as text, its upvalues as values.
  local cheapest = nil
  state.consider = function(node_name, price)
    if price ~= nil and (cheapest == nil or price < cheapest.price) then
      cheapest = { node = node_name, price = price }
    end
    return cheapest
  end
  return hunter.visit(state)
end

function hunter.visit(state)
  local catalogue = node.call("kv.get", "catalogue") or {}
  local price = catalogue[state.item]
  state.offers[#state.offers + 1] = { node = agent.here, price = price or "none" }
  state.best = state.consider(agent.here, price)
  agent.log(state.item .. " costs " .. tostring(price) .. " here")
  -- Messages sent with `sojourn send` wait in the agent's mailbox, wherever it is.
  local note = agent.receive()
  if note then state.note = note end

  local next_stop = agent.itinerary[1]
  if next_stop then agent.go(next_stop, "visit") end
  return { item = state.item, best = state.best, offers = state.offers, note = state.note }
end

return hunter
