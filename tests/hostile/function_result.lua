-- expect: not_transferable value at result[1].cb cannot travel: functions are not supported yet
return {cb = function() return os end}
