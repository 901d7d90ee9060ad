// Conversion between Lua values on a lua_State's stack and sojourn Values, with shared
// tables and cycles kept both ways; used by the sandbox and by agent state migration.
#pragma once

#include <cstdint>
#include <string_view>

#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"

struct lua_State;

namespace sojourn::sandbox::lua {

// Functions travel as source text: the text is cut out of the source of the chunk that
// defined them, so every chunk whose functions may travel is registered first (run_lua
// registers each run's chunk; functions rebuilt by push_value register themselves). A
// chunk loaded with luaL_loadstring (its text as its name) needs no registration.
// Raise Lua errors (memory): call them from a protected context.
void register_chunk(lua_State* L, std::string_view chunk_name, std::string_view source, int first_line = 1);
// Registers a chunk a run deferred (a pooled run's: RunContext::deferred_chunk_*, set by
// run_lua), when one is pending; called before registered texts are read. Raises Lua errors
// (memory); a refused allocation leaves it pending.
void register_deferred_chunk(lua_State* L);
// Counts a function pushed from a value into the run on L (RunContext::functions_pushed):
// code other than the run's chunk, for the pool's library comparison. Nothing on a state
// without a RunContext.
void note_pushed_function(lua_State* L) noexcept;
// Counts a write to the registry during the run on L (RunContext::registry_writes): every C
// path of the sandbox that adds, replaces or fills a registry entry while a run is on calls
// it, so that the pool's reset may skip its walk of the registry when there was none.
void note_registry_write(lua_State* L) noexcept;
// Every function reachable from the globals table at `globals` (the restricted
// environment: print, table.insert, ...) travels by name and is found by name where it is
// rebuilt, in that run's own registered library. Other C functions cannot travel.
void register_library(lua_State* L, int globals);

struct ToValueOptions {
  // First element of paths in messages: "value at result[2].cb cannot travel: ...".
  std::string_view root_name = "value";
  // Cap on the C++ size of the converted graph (slots, tables, string bytes); 0 = no cap.
  // Exceeding it, or running out of Lua memory while converting, fails with memory_limit
  // "memory limit of N bytes exceeded" where N is this value.
  std::uint64_t max_bytes = 0;
};

// Lua -> Value. Numbers with an integral value below 2^53 in magnitude become integers (NaN,
// infinities and -0.0 stay numbers). The same Lua table becomes the same Value table, so
// sharing and cycles survive. Metatables are not carried. A Lua function becomes a function
// Value (its text and its upvalues, converted like any value; a captured variable shared by
// several functions becomes one cell); a library function travels by name. Globals a
// function uses are not carried: they are the destination's. C functions, userdata and
// coroutines fail with not_transferable "value at PATH cannot travel: ..." where PATH is
// Lua-like: root.name, root[3], root["odd key"], root.f (upvalue 'helper').x.
// Both convert inside their own protected call, so a lack of Lua memory comes back as a
// memory_limit error; only setting up that call (a few stack slots and a C closure) can
// raise, so call them from a protected context or with memory to spare.

// Converts the value at `index` (left on the stack).
Result<Value> to_value(lua_State* L, int index, const ToValueOptions& options);
// Converts the `count` values on top of the stack into an array table whose items are
// root[1]..root[count], and pops them. A nil among them leaves a hole (key absent).
Result<Value> pop_as_array(lua_State* L, int count, const ToValueOptions& options);

// Value -> Lua. Tables are created fresh; sharing and cycles are kept. Integers beyond 2^53
// lose precision (Lua 5.1 numbers are doubles). These raise a Lua error when the state runs
// out of memory: call them from a protected context (a lua_CFunction under pcall).

// Functions are rebuilt from their text (see lua_function.hpp); a function that must not be
// rebuilt raises "refused by the sandbox: ..." (bytecode, a text that is not one function
// expression, an unknown library function).

// Pushes one value.
void push_value(lua_State* L, const Value& value);
// Pushes items 1..length() of an array table (tables shared between items stay shared)
// and returns how many were pushed; a nil or non-table value pushes nothing.
int push_array_items(lua_State* L, const Value& array);

// The same inside their own protected call, returning how many values were pushed, or:
//   sandbox_refused "refused by the sandbox: ..." (a function that must not be rebuilt)
//   memory_limit    "memory limit of N bytes exceeded" (N is `memory_bytes`)
// Only setting up that call (a C function and a light userdata) can raise.
Result<int> push_value_protected(lua_State* L, const Value& value, std::uint64_t memory_bytes);
Result<int> push_array_items_protected(lua_State* L, const Value& array, std::uint64_t memory_bytes);

}  // namespace sojourn::sandbox::lua
