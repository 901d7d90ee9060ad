-- expect: not_transferable value at result[1].cb cannot travel: a C function
-- Lua closures travel as text; a C function (here a string.gmatch iterator) cannot.
return {cb = string.gmatch("a b", "%a")}
