-- A strong agent (sojourn launch tour.lua --strong): agent.go(stop) without an entry moves the
-- whole Lua heap, and the loop goes on at the next line on `stop`, with `seen`, the loop's
-- position and the half-used generator as they were.
function start(state)
  local seen, gen = {}, coroutine.wrap(function() for i = 1, 10 do coroutine.yield(i) end end)
  for _, stop in ipairs(state.stops) do
    local n = gen()
    agent.go(stop)  -- no entry: the agent resumes HERE, on `stop`
    seen[#seen + 1] = { at = agent.here, n = n, price = node.call("kv.get", "price") }
  end
  return seen
end
