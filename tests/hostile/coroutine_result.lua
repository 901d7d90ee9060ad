-- expect: not_transferable value at result[1]["odd key"][1] cannot travel: coroutines cannot travel
return {['odd key'] = {coroutine.create(function() end)}}
