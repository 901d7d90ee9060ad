// Fingerprints of LuaJIT bytecode, to tell apart functions defined on the same lines: the
// sending side compares a function with candidates recompiled from text. Never loaded.
#pragma once

#include <string>

struct lua_State;

namespace sojourn::sandbox::lua {

// What tells one function apart from another: the LuaJIT dump (lj_bcwrite.c format) of
// the Lua function at -1, every prototype (nested functions first) by its header, bytecode
// and constants, without upvalue descriptors (which say where in the parent each upvalue
// lives, and differ between the original and a recompiled candidate) and debug info.
// Empty for a C function or a dump it cannot read.
std::string bytecode_signature(lua_State* L);

}  // namespace sojourn::sandbox::lua
