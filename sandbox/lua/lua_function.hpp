// Lua functions as Values: where their text comes from on the sending side (the run's
// registry of chunk sources, the standard library by name) and how they are rebuilt on
// the receiving side (a text-mode load of a wrapper that declares the upvalues).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>

#include "sandbox/lua/lua_source_scan.hpp"
#include "sojourn/core/value.hpp"

struct lua_State;

namespace sojourn::sandbox::lua {

// What a Lua function travels as (its upvalues aside).
struct FunctionOrigin {
  detail::SharedText source;      // one function expression; empty for a library function
  detail::SharedText chunk_name;  // as lua_getinfo reports it ("=eval")
  std::uint32_t line = 1;         // of `function` in that chunk
  std::string library_name;       // "table.insert" for a function of the standard library
};

// Function texts already cut out during one conversion, so that many closures of one
// function (a loop making counters) are searched for once and share one text.
struct SourceCache {
  std::map<std::pair<const void*, int>, std::vector<FunctionStart>> indexes;  // (text, first line)
  std::map<std::tuple<std::string, int, int>, std::vector<detail::SharedText>> candidates;
  // (chunk, lines, upvalue names) -> each candidate's bytecode signature -> its text
  std::map<std::string, std::unordered_map<std::string, detail::SharedText>> signatures;
  std::unordered_map<std::string_view, detail::SharedText> texts;  // keys view their values

  // The one shared copy of `text` in this conversion.
  detail::SharedText intern(std::string_view text) {
    if (auto it = texts.find(text); it != texts.end()) return it->second;
    detail::SharedText shared{std::string(text)};
    texts.emplace(shared.str(), shared);
    return shared;
  }
};

// The origin of the function at stack `index`, or why it cannot travel ("a C function").
// Raises Lua errors (memory) only: call it from a protected context.
std::variant<FunctionOrigin, std::string> function_origin(lua_State* L, int index, SourceCache& cache);

// Pushes a new function for `data` with its upvalues still unset (nil), registered so that
// it can travel again. Raises a Lua error "refused by the sandbox: ..." for a function that
// must not be rebuilt (bytecode, not one function expression, bad upvalue names, unknown
// library function, a text that does not compile). `makers` is the stack index of a
// table that keeps compiled wrappers for the rest of one push (0: none).
void push_rebuilt_function(lua_State* L, const detail::FunctionData& data, int makers);

// The index (0-based) in `data.upvalue_names` of upvalue `name`, or -1.
int upvalue_slot(const detail::FunctionData& data, std::string_view name);

}  // namespace sojourn::sandbox::lua
