function start(s) local m = agent.receive(); if not m then agent.wait('start') end; return m.n + 1 end
