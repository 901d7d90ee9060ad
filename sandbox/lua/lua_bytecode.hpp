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

// Whether the Lua function at -1 and every function it defines (its whole dump) hold no
// GSET, the one instruction that writes a global (the function's environment table by a
// constant name). GSET's number is learned once per process from LuaJIT itself: the opcodes
// of `x = 1` less those of `local x = 1`; when that is not exactly one opcode, or the dump
// cannot be read, the answer is false. Only the function's own text is judged: a table
// store into the environment needs the table, which a text can get only by naming `_G`
// (the caller's business).
bool writes_no_global(lua_State* L);

}  // namespace sojourn::sandbox::lua
