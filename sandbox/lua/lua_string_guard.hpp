// Guards for the string library's C functions, which never see the count hook: a bound on
// pattern backtracking and on the size of string.rep's result.
#pragma once

#include <cstddef>
#include <string_view>

struct lua_State;

namespace sojourn::sandbox::detail {

// Worst-case matcher steps a pattern may take before the sandbox refuses it (~0.1-0.5 s).
inline constexpr double kPatternStepBudget = 1e8;

// An estimate of the worst-case steps of Lua 5.1's backtracking matcher for `pattern` on a
// subject of `subject_bytes`: subject^k, times 2 per optional item, times the subject again
// for the start positions of an unanchored search, where k counts the items that make it
// backtrack (a '*', '+' or '-' item followed by an item that can fail, %b, back-references).
// A pattern without such items is linear and costs 0. Malformed patterns cost 0: the
// matcher reports them.
double pattern_cost(std::string_view pattern, std::size_t subject_bytes, bool anchor_allowed);

// Replaces find, match, gmatch, gsub, rep and format of the string table at `string_table`
// with guarded versions that keep the originals as upvalues.
void guard_string_library(lua_State* L, int string_table);

}  // namespace sojourn::sandbox::detail
