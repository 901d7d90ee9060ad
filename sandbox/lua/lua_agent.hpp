// The Lua side of mobile agents and code-on-demand: the `agent` table of an agent run and
// `require_remote`, both thin layers over host calls.
#pragma once

#include "sojourn/core/value.hpp"

struct lua_State;

namespace sojourn::sandbox::detail {

// Sets the global `agent`: the fields of `info`, and go/receive/log. Raises Lua errors
// (memory): call it in protected mode.
void open_agent_api(lua_State* L, const Value& info);

// Sets the global `require_remote(name)`: the module's source comes from the host (host
// call "code.require", answered with {source=..., chunk=...}), is loaded as text, run once
// per run with its name as argument, and its result cached for the rest of the run.
void open_require_remote(lua_State* L);

}  // namespace sojourn::sandbox::detail
