-- expect: sandbox_refused refused by the sandbox: the text of function from agent:1 is not one function expression
-- limits: cpu=1000
-- arg-function: #{}, (function() local n = 0 for i = 1, 3e7 do n = n + i end return n end)(),\nfunction() end
-- A function text is loaded as `return <text>`: a leading '#' is the length operator there,
-- not a skipped line, and the extra expression would run while the argument is rebuilt.
return (...)
