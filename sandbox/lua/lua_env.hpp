// The restricted global environment of a trusted run: base (pruned to an allow-list),
// string, table, math, coroutine, and the `node` table.
#pragma once

struct lua_State;

namespace sojourn::sandbox::detail {

// Opens the allowed libraries into L's globals and wraps every function that could dodge
// the limits. The JIT engine is turned on only when `enable_jit` (its module is never
// reachable from Lua). Raises Lua errors (memory): call it in protected mode.
void open_restricted_env(lua_State* L, bool enable_jit);

}  // namespace sojourn::sandbox::detail
