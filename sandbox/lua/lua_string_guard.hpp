// Guards for the string library's C functions, which never see the count hook: each call is
// charged its worst-case work against the run's budget, patterns past a fixed bound are
// refused, and string.rep's result is bounded by the memory budget.
#pragma once

#include <cstddef>
#include <string_view>

struct lua_State;

namespace sojourn::sandbox::detail {

// Worst-case matcher steps a pattern may take before the sandbox refuses it outright, whatever
// the run's budget (~0.1-0.5 s); cheaper calls are charged to the budget (charge_work).
inline constexpr double kPatternStepBudget = 1e8;

// An estimate of the worst-case steps of Lua 5.1's backtracking matcher for `pattern` on a
// subject of `subject_bytes`: the checks of one attempt (one per item, a set's bytes / 4),
// times subject^k, times 2 per optional item, times subject + 1 for the start positions of an
// unanchored search, where k counts the items that make it backtrack (a '*', '+' or '-' item
// followed by an item that can fail, %b, back-references). A quantifier-free pattern is
// O(subject * pattern), never free. Malformed patterns cost 0: the matcher reports them.
double pattern_cost(std::string_view pattern, std::size_t subject_bytes, bool anchor_allowed);

// Steps of a plain find (memchr and memcmp at each candidate position): O(subject * needle).
double plain_find_cost(std::size_t subject_bytes, std::size_t needle_bytes);

// Replaces find, match, gmatch, gsub, rep, format, upper, lower, reverse and sub of the string table at `string_table`
// with guarded versions that keep the originals as upvalues.
void guard_string_library(lua_State* L, int string_table);

}  // namespace sojourn::sandbox::detail
