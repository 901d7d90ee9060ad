-- expect: lua_error Lua error at collectgarbage_abuse:2: collectgarbage("collect") is not available in the sandbox
collectgarbage('collect')
