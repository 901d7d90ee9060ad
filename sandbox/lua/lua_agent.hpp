// The Lua side of mobile agents and code-on-demand: the `agent` table of an agent run and
// `require_remote`, both thin layers over host calls.
#pragma once

#include "sojourn/core/value.hpp"

struct lua_State;

namespace sojourn::sandbox::detail {

// Sets the global `agent`: the fields of `info`, and go/receive/log. Raises Lua errors
// (memory): call it in protected mode.
// In a prepared state (prepare_agent_api), the functions are the prepared ones.
void open_agent_api(lua_State* L, const Value& info);

// For a prepared (pooled) state: makes agent.go/wait/receive/log once, keeps them in the
// registry (out of every script's reach) and registers them under those names, so that each
// agent step's `agent` table, new per run, holds functions that travel by name as in a fresh
// state. Raises Lua errors (memory): call it in protected mode.
void prepare_agent_api(lua_State* L);

// Sets the global `require_remote(name)`: the module's source comes from the host (host
// call "code.require", answered with {source=..., chunk=...}), is loaded as text, run once
// per run with its name as argument, and its result cached for the rest of the run.
void open_require_remote(lua_State* L);

}  // namespace sojourn::sandbox::detail
