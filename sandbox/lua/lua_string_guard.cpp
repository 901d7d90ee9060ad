// The string library's guards. The count hook never fires inside a C function, so a
// backtracking string.find can burn CPU for minutes past every budget. The process and
// microVM jails of later isolation levels kill such a call by CPU time; at the trusted level
// this static bound on the pattern's worst case is what stands in for that kill.
#include "sandbox/lua/lua_string_guard.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <lua.hpp>

#include "sandbox/lua/lua_limits.hpp"

namespace sojourn::sandbox::detail {

namespace {

constexpr std::size_t kMalformed = std::string_view::npos;
// lstrlib's SPECIALS: a find pattern without any of them is searched for as plain bytes.
constexpr const char* kPatternSpecials = "^$*+?.([%-";
// Bytes memcmp and memcpy go through in the time of one step.
constexpr double kBytesPerStep = 64;

// The end (exclusive) of the single-character class at p[i], as lstrlib's classEnd sees it.
std::size_t class_end(std::string_view p, std::size_t i) {
  const std::size_t n = p.size();
  if (p[i] == '%') return i + 1 < n ? i + 2 : kMalformed;
  if (p[i] != '[') return i + 1;
  std::size_t j = i + 1;
  if (j < n && p[j] == '^') ++j;
  do {  // the first character of a set may be ']' itself
    if (j >= n) return kMalformed;
    const char c = p[j++];
    if (c == '%' && j < n) ++j;
  } while (j >= n || p[j] != ']');
  return j + 1;
}

struct PatternItem {
  char quantifier = 0;  // '*', '+', '-', '?' or 0
  bool can_fail = true; // fails on some subject position (so earlier items retry)
  bool linear = false;  // scans the subject on each attempt (%b, back-reference)
  bool any_char = false;
  bool end_anchor = false;
  double weight = 1;    // checks of one subject byte against the item: a set's bytes count
};

}  // namespace

double pattern_cost(std::string_view p, std::size_t subject_bytes, bool anchor_allowed) {
  std::vector<PatternItem> items;
  std::size_t i = 0;
  bool anchored = false;
  if (anchor_allowed && !p.empty() && p[0] == '^') {
    anchored = true;
    i = 1;
  }
  const std::size_t n = p.size();
  while (i < n) {
    const char c = p[i];
    if (c == '(') {
      i += (i + 1 < n && p[i + 1] == ')') ? 2 : 1;  // captures never fail
      continue;
    }
    if (c == ')') {
      ++i;
      continue;
    }
    if (c == '$' && i + 1 == n) {
      items.push_back(PatternItem{0, true, false, false, true});
      ++i;
      continue;
    }
    if (c == '%' && i + 1 < n) {
      const char d = p[i + 1];
      if (d == 'b') {
        if (i + 3 >= n) return 0;
        items.push_back(PatternItem{0, true, true, false, false});
        i += 4;
        continue;
      }
      if (d == 'f') {
        i += 2;
        if (i >= n || p[i] != '[') return 0;
        i = class_end(p, i);
        if (i == kMalformed) return 0;
        items.push_back(PatternItem{});
        continue;
      }
      if (std::isdigit(static_cast<unsigned char>(d))) {
        items.push_back(PatternItem{0, true, true, false, false});
        i += 2;
        continue;
      }
    }
    const std::size_t end = class_end(p, i);
    if (end == kMalformed) return 0;
    PatternItem item;
    item.any_char = c == '.' && end == i + 1;
    item.weight = std::max(1.0, static_cast<double>(end - i) / 4);
    i = end;
    if (i < n && std::strchr("*+-?", p[i]) != nullptr) {
      item.quantifier = p[i];
      item.can_fail = p[i] == '+';  // the others match the empty string
      ++i;
    }
    items.push_back(item);
  }

  int backtracking = 0;
  int optional = 0;
  double per_position = 1;  // single-item checks one attempt makes before it fails or matches
  for (std::size_t j = 0; j < items.size(); ++j) {
    const PatternItem& item = items[j];
    per_position += item.weight;
    if (item.linear) {
      ++backtracking;
      continue;
    }
    if (item.quantifier == 0) continue;
    bool later_fails = false;
    for (std::size_t k = j + 1; k < items.size() && !later_fails; ++k) {
      // ".*" and ".-" always reach the end, so a final '$' never makes them retry.
      later_fails = items[k].can_fail && !(item.any_char && items[k].end_anchor);
    }
    if (!later_fails) continue;
    if (item.quantifier == '?') {
      ++optional;
    } else {
      ++backtracking;
    }
  }
  const auto size = static_cast<double>(subject_bytes);
  double cost = per_position * std::pow(std::max(size, 1.0), backtracking) * std::pow(2.0, optional);
  if (!anchored) cost *= size + 1;
  return cost;
}

double plain_find_cost(std::size_t subject_bytes, std::size_t needle_bytes) {
  if (needle_bytes > subject_bytes) return 1;
  const auto positions = static_cast<double>(subject_bytes - needle_bytes + 1);
  return positions * (1 + static_cast<double>(needle_bytes) / kBytesPerStep);
}

namespace {

enum class PatternUse { find, match, gmatch, gsub };

// Calls the original (upvalue 1) with this call's arguments and returns all its results.
int call_original(lua_State* L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

// The argument checks come first so that their errors name the caller's line, as the
// original's own would if the original were called from Lua rather than from here.
// Every call is charged its worst case before it runs: lstrlib's matcher never sees the
// count hook. A pattern past kPatternStepBudget is refused outright (a Lua error the script
// may catch); a cheaper one is charged to the run's budget, which kills the run when the
// work would pass what is left of it.
template <PatternUse kUse>
int guarded_pattern_function(lua_State* L) {
  check_c_stack(L);
  std::size_t subject_bytes = 0;
  std::size_t pattern_bytes = 0;
  luaL_checklstring(L, 1, &subject_bytes);
  const char* pattern = luaL_checklstring(L, 2, &pattern_bytes);
  const std::string_view p(pattern, pattern_bytes);
  // find with plain=true, or with no special character, compares bytes (lmemfind).
  const bool plain = kUse == PatternUse::find &&
                     (lua_toboolean(L, 4) != 0 || p.find_first_of(kPatternSpecials) == std::string_view::npos);
  if (plain) {
    charge_work(L, plain_find_cost(subject_bytes, pattern_bytes));
    return call_original(L);
  }
  // gmatch treats a leading '^' as a literal in Lua 5.1.
  const bool anchor_allowed = kUse != PatternUse::gmatch;
  double cost = pattern_cost(p, subject_bytes, anchor_allowed);
  if (cost > kPatternStepBudget) raise_limit(L, pattern_refused_error(subject_bytes));
  // gsub also copies the subject into its result.
  if (kUse == PatternUse::gsub) cost += static_cast<double>(subject_bytes);
  charge_work(L, cost);
  return call_original(L);
}

// LuaJIT's string.rep truncates the count to 32 bits and returns "" when the result would
// pass 2 GB: check the size against the memory budget first and fail like the allocator.
int guarded_rep(lua_State* L) {
  std::size_t unit = 0;
  std::size_t separator = 0;
  luaL_checklstring(L, 1, &unit);
  const double count = std::floor(luaL_checknumber(L, 2));
  if (!lua_isnoneornil(L, 3)) luaL_checklstring(L, 3, &separator);
  if (count >= 1 && unit + separator > 0) {
    const double total = count * static_cast<double>(unit) + (count - 1) * static_cast<double>(separator);
    const RunContext& ctx = run_context(L);
    const double room = ctx.byte_cap > ctx.bytes_in_use ? static_cast<double>(ctx.byte_cap - ctx.bytes_in_use) : 0;
    constexpr double kLargestLuaString = 0x7fffff00;  // LJ_MAX_STR
    if (total > room || total > kLargestLuaString) {
      raise_limit(L, limit_error(Errc::memory_limit, ctx.limits));
    }
    // A unit at a time, each a short copy: ~16 bytes or units a step.
    charge_work(L, (count + total) / 16);
  }
  return call_original(L);
}

// upper, lower, reverse: one pass over the first argument, a byte at a time.
int guarded_linear(lua_State* L) {
  std::size_t bytes = 0;
  luaL_checklstring(L, 1, &bytes);
  charge_work(L, 1 + static_cast<double>(bytes) / 8);
  return call_original(L);
}

// sub: a copy of the part it returns (positions as string.sub reads them).
int guarded_sub(lua_State* L) {
  std::size_t bytes = 0;
  luaL_checklstring(L, 1, &bytes);
  const auto size = static_cast<double>(bytes);
  const auto position = [size](double at) { return at < 0 ? std::max(size + at + 1, 0.0) : at; };
  const double from = std::max(position(luaL_optnumber(L, 2, 1)), 1.0);
  const double to = std::min(position(luaL_optnumber(L, 3, -1)), size);
  charge_work(L, 1 + std::max(to - from + 1, 0.0) / kBytesPerStep);
  return call_original(L);
}

// string.format("%s") calls __tostring from C: only the C-stack guard is needed.
int guarded_format(lua_State* L) {
  check_c_stack(L);
  luaL_checkstring(L, 1);
  double bytes = 0;
  for (int i = 1, n = lua_gettop(L); i <= n; ++i) {
    if (lua_type(L, i) == LUA_TSTRING) bytes += static_cast<double>(lua_objlen(L, i));
  }
  charge_work(L, lua_gettop(L) + bytes / 8);
  return call_original(L);
}

void replace_field(lua_State* L, int table, const char* name, lua_CFunction guard) {
  lua_getfield(L, table, name);
  lua_pushcclosure(L, guard, 1);
  lua_setfield(L, table, name);
}

}  // namespace

void guard_string_library(lua_State* L, int string_table) {
  replace_field(L, string_table, "find", guarded_pattern_function<PatternUse::find>);
  replace_field(L, string_table, "match", guarded_pattern_function<PatternUse::match>);
  replace_field(L, string_table, "gmatch", guarded_pattern_function<PatternUse::gmatch>);
  replace_field(L, string_table, "gsub", guarded_pattern_function<PatternUse::gsub>);
  replace_field(L, string_table, "rep", guarded_rep);
  replace_field(L, string_table, "format", guarded_format);
  for (const char* name : {"upper", "lower", "reverse"}) replace_field(L, string_table, name, guarded_linear);
  replace_field(L, string_table, "sub", guarded_sub);
}

}  // namespace sojourn::sandbox::detail
