// The restricted global environment of a trusted run: base (pruned to an allow-list),
// string, table, math, coroutine, and the `node` table.
#pragma once

struct lua_State;

namespace sojourn::sandbox::detail {

// Opens the allowed libraries into L's globals and wraps every function that could dodge
// the limits. The JIT engine is turned on only when `enable_jit` (its module is never
// reachable from Lua). Raises Lua errors (memory): call it in protected mode.
void open_restricted_env(lua_State* L, bool enable_jit);

// Test seam: the test guest (sandbox/guest/test_hooks.cpp) sets it, for one chunk marked for
// it, to hand that run values the environment never gives (a userdata, a cdata), so that the
// strong travel check is tested end to end. The real guest and the host never set it. Called
// in protected mode after the environment is open.
using TestGlobals = void (*)(lua_State* L);
void set_test_globals(TestGlobals open);
TestGlobals test_globals();

}  // namespace sojourn::sandbox::detail
