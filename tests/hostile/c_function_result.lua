-- expect: not_transferable value at result[1].cb cannot travel: a C function
-- string.gmatch's iterator is a C function with no name in the library: nothing to send.
return {cb = string.gmatch('a', 'a')}
