-- expect: lua_error Lua error: nothing reached
local names = {'os', 'io', 'ffi', 'debug', 'jit', 'package', 'require', 'load', 'loadstring',
               'dofile', 'loadfile', 'module', 'getfenv', 'setfenv', 'newproxy', 'gcinfo'}
for _, name in ipairs(names) do
  if _G[name] ~= nil or rawget(_G, name) ~= nil then error('reached ' .. name, 0) end
  for k, v in pairs(_G) do
    if type(v) == 'table' and rawget(v, name) ~= nil and k ~= 'node' then error('reached ' .. k .. '.' .. name, 0) end
  end
end
error('nothing reached', 0)
