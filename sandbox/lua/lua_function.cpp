// Lua functions as Values. Sending side: a function's text is cut out of its chunk's
// source (kept per run in the registry) by line range, and when several functions share
// those lines, the one whose bytecode matches is chosen. Receiving side: the text is loaded
// in mode "t" inside `local <upvalue names>; return <text>`, padded with newlines so that
// line numbers in messages are the original ones.
#include "sandbox/lua/lua_function.hpp"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_set>

#include <lua.hpp>

#include "sandbox/lua/lua_bytecode.hpp"
#include "sandbox/lua/lua_source_scan.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace sojourn::sandbox::lua {

namespace {

// Registry tables; scripts never reach the registry (no debug library).
constexpr const char* kChunksKey = "sojourn.chunks";        // chunk name -> {text -> {first line -> true}}
constexpr const char* kFunctionsKey = "sojourn.functions";  // rebuilt function -> its text (weak keys)
constexpr const char* kLibraryKey = "sojourn.library";      // function -> name and name -> function

// Up to this many lines of padding; a function said to start further down is loaded
// without padding (its messages then count lines from its own first line).
constexpr std::uint32_t kMaxPaddingLines = 100000;
constexpr std::size_t kMaxUpvalues = 60;  // LuaJIT's limit per function

int absolute(lua_State* L, int index) { return index > 0 || index <= LUA_REGISTRYINDEX ? index : lua_gettop(L) + index + 1; }

// Pushes registry[key], creating it first when missing.
// Every caller goes on to write to it (or to create it): counted as a registry write.
void push_registry_table(lua_State* L, const char* key, const char* weak_mode) {
  note_registry_write(L);
  lua_getfield(L, LUA_REGISTRYINDEX, key);
  if (lua_istable(L, -1)) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 0);
  if (weak_mode != nullptr) {
    lua_createtable(L, 0, 1);
    lua_pushstring(L, weak_mode);
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
}

// Pushes t[key] for the table at -1, creating an empty table there when missing.
void push_subtable(lua_State* L, std::string_view key) {
  lua_pushlstring(L, key.data(), key.size());
  lua_rawget(L, -2);
  if (lua_istable(L, -1)) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushlstring(L, key.data(), key.size());
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);
}

std::string_view lua_view(lua_State* L, int index) {
  std::size_t len = 0;
  const char* s = lua_tolstring(L, index, &len);
  return {s, len};
}

std::string display_name(std::string_view chunk_name) {
  if (!chunk_name.empty() && (chunk_name[0] == '=' || chunk_name[0] == '@')) chunk_name.remove_prefix(1);
  if (chunk_name.size() > 60) return std::string(chunk_name.substr(0, 57)) + "...";
  return std::string(chunk_name);
}

std::vector<std::string> upvalue_names(lua_State* L, int fn) {
  std::vector<std::string> names;
  for (int i = 1;; ++i) {
    const char* name = lua_getupvalue(L, fn, i);
    if (name == nullptr) break;
    lua_pop(L, 1);
    names.emplace_back(name);
  }
  return names;
}

// Loads `text` inside the chunk function_chunk makes of it (`local a, b; a, b = nil; return
// <text>`: the assignment makes LuaJIT see every local as written, since a local that is
// never written gives an immutable upvalue cell, which the JIT may fold to a constant, and a
// rebuilt cell can be shared with a function that writes it through lua_upvaluejoin), and
// leaves that chunk on the stack: each call of it makes a new closure with fresh upvalues.
// The chunk is checked as loaded, so calling it runs no code of the text.
enum class MakerStatus { loaded, not_one_function, cdata, not_compiled };

MakerStatus load_maker(lua_State* L, std::string_view text, const std::vector<std::string>& names, std::uint32_t line,
                       const char* chunk_name) {
  const std::size_t padding = line > 1 && line <= kMaxPaddingLines ? line - 1 : 0;
  const std::string chunk = function_chunk(text, names, padding);
  if (!is_one_function_chunk(chunk)) return MakerStatus::not_one_function;
  if (has_cdata_literal(chunk)) return MakerStatus::cdata;
  const int status = luaL_loadbufferx(L, chunk.data(), chunk.size(), chunk_name, "t");
  if (status == LUA_ERRMEM) lua_error(L);
  return status == 0 ? MakerStatus::loaded : MakerStatus::not_compiled;
}

// Among candidates cut from the same lines, the one that compiles to the function at
// `fn` (same upvalue names in the same order, same bytecode and constants). Each candidate
// is compiled once per conversion and upvalue list, not once per closure: a chunk with a
// thousand functions on one line costs a thousand compilations, not a million.
std::optional<detail::SharedText> pick_candidate(lua_State* L, int fn, const std::vector<detail::SharedText>& candidates,
                                                 SourceCache& cache, std::string lines_key) {
  const std::vector<std::string> names = upvalue_names(L, fn);
  lua_pushvalue(L, fn);
  std::string original = bytecode_signature(L);
  lua_pop(L, 1);
  if (original.empty()) return std::nullopt;
  for (const std::string& n : names) {
    original.append("\n").append(n);
    lines_key.append("\n").append(n);
  }
  auto [set, inserted] = cache.signatures.try_emplace(std::move(lines_key));
  if (inserted) {
    for (const detail::SharedText& candidate_text : candidates) {
      const MakerStatus status = load_maker(L, candidate_text.str(), names, 1, "=candidate");
      if (status == MakerStatus::not_compiled) lua_pop(L, 1);
      if (status != MakerStatus::loaded) continue;
      lua_call(L, 0, 1);
      std::string candidate = bytecode_signature(L);
      for (const std::string& n : upvalue_names(L, lua_gettop(L))) candidate.append("\n").append(n);
      lua_pop(L, 1);
      set->second.try_emplace(std::move(candidate), candidate_text);  // the first of equal ones
    }
  }
  auto found = set->second.find(original);
  if (found == set->second.end()) return std::nullopt;
  return found->second;
}

// Every text registered for `chunk_name` that holds the lines, cut into candidates.
std::vector<detail::SharedText> find_candidates(lua_State* L, std::string_view chunk_name, int first, int last,
                                                bool& known, SourceCache& cache) {
  std::vector<detail::SharedText> out;
  std::unordered_set<std::string_view> seen;  // views of interned texts, which the cache keeps
  auto add = [&](std::string_view text, int first_line) {
    // Registered texts stay put while the conversion runs: their address names them.
    auto key = std::make_pair(static_cast<const void*>(text.data()), first_line);
    auto it = cache.indexes.find(key);
    if (it == cache.indexes.end()) it = cache.indexes.emplace(key, index_functions(text, first_line)).first;
    for (const FunctionText& f : find_functions(text, it->second, first, last)) {
      detail::SharedText shared = cache.intern(f.text);
      if (seen.insert(shared.str()).second) out.push_back(std::move(shared));
    }
  };
  known = false;
  if (chunk_name.empty() || (chunk_name[0] != '=' && chunk_name[0] != '@')) {
    known = true;  // a chunk loaded under its own text as name (luaL_loadstring)
    add(chunk_name, 1);
    return out;
  }
  register_deferred_chunk(L);
  lua_getfield(L, LUA_REGISTRYINDEX, kChunksKey);
  if (lua_istable(L, -1)) {
    lua_pushlstring(L, chunk_name.data(), chunk_name.size());
    lua_rawget(L, -2);
    if (lua_istable(L, -1)) {
      lua_pushnil(L);
      while (lua_next(L, -2) != 0) {  // text -> {first line -> true}
        known = true;
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
          lua_pop(L, 1);
          const int first_line = static_cast<int>(lua_tonumber(L, -1));
          if (first_line <= first) add(lua_view(L, -3), first_line);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return out;
}

// The name is the string at the top of the stack (popped); `fn` the function it names.
void add_library_function(lua_State* L, int library, int fn) {
  const int name = lua_gettop(L);
  lua_pushvalue(L, name);
  lua_pushvalue(L, fn);
  lua_rawset(L, library);
  // One name per function, the same on every node: the shortest, then the first in order.
  lua_pushvalue(L, fn);
  lua_rawget(L, library);
  bool better = !lua_isstring(L, -1);
  if (!better) {
    const std::string_view now = lua_view(L, -1), candidate = lua_view(L, name);
    better = candidate.size() < now.size() || (candidate.size() == now.size() && candidate < now);
  }
  lua_pop(L, 1);
  if (better) {
    lua_pushvalue(L, fn);
    lua_pushvalue(L, name);
    lua_rawset(L, library);
  }
  lua_pop(L, 1);
}

[[noreturn]] void refuse(lua_State* L, const std::string& why) {
  {
    const std::string message = "refused by the sandbox: " + why;
    lua_pushlstring(L, message.data(), message.size());
  }
  lua_error(L);
  std::abort();  // lua_error does not return
}

}  // namespace

void register_chunk(lua_State* L, std::string_view chunk_name, std::string_view source, int first_line) {
  lua_checkstack(L, 5);
  push_registry_table(L, kChunksKey, nullptr);
  push_subtable(L, chunk_name);
  push_subtable(L, source);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, first_line);
  lua_pop(L, 3);
}

void register_library(lua_State* L, int globals) {
  globals = absolute(L, globals);
  lua_checkstack(L, 10);
  lua_getfield(L, LUA_REGISTRYINDEX, kLibraryKey);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    // Sized for a whole environment's functions, both ways (about 130 of each): built for
    // every run, it would otherwise be rehashed as it grows, a sixth of a small run's work.
    lua_createtable(L, 0, 512);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, kLibraryKey);
  }
  const int library = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, globals) != 0) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      const int value = lua_gettop(L);
      if (lua_isfunction(L, value)) {
        lua_pushvalue(L, value - 1);
        add_library_function(L, library, value);
      } else if (lua_istable(L, value) && lua_view(L, value - 1) != "_G") {
        lua_pushnil(L);
        while (lua_next(L, value) != 0) {
          if (lua_type(L, -2) == LUA_TSTRING && lua_isfunction(L, -1)) {
            const int fn = lua_gettop(L);
            lua_pushvalue(L, value - 1);
            lua_pushliteral(L, ".");
            lua_pushvalue(L, fn - 1);
            lua_concat(L, 3);  // "table.name"
            add_library_function(L, library, fn);
          }
          lua_pop(L, 1);
        }
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

std::variant<FunctionOrigin, std::string> function_origin(lua_State* L, int index, SourceCache& cache) {
  const int fn = absolute(L, index);
  lua_checkstack(L, 10);
  FunctionOrigin origin;
  lua_getfield(L, LUA_REGISTRYINDEX, kLibraryKey);
  if (lua_istable(L, -1)) {
    lua_pushvalue(L, fn);
    lua_rawget(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) origin.library_name = lua_view(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (!origin.library_name.empty()) {
    origin.chunk_name = cache.intern("=[library]");
    return origin;
  }
  if (lua_iscfunction(L, fn)) return std::string("a C function");

  lua_Debug ar{};
  lua_pushvalue(L, fn);
  lua_getinfo(L, ">S", &ar);
  if (std::strcmp(ar.what, "main") == 0) return std::string("a main chunk");
  origin.chunk_name = cache.intern(ar.source);
  const std::string& chunk_name = origin.chunk_name.str();
  origin.line = static_cast<std::uint32_t>(std::max(ar.linedefined, 1));

  lua_getfield(L, LUA_REGISTRYINDEX, kFunctionsKey);
  if (lua_istable(L, -1)) {
    lua_pushvalue(L, fn);
    lua_rawget(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) origin.source = cache.intern(lua_view(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (!origin.source.str().empty()) return origin;

  auto key = std::make_tuple(chunk_name, ar.linedefined, ar.lastlinedefined);
  auto it = cache.candidates.find(key);
  const std::string where = display_name(chunk_name);
  if (it == cache.candidates.end()) {
    bool known = false;
    std::vector<detail::SharedText> found = find_candidates(L, chunk_name, ar.linedefined, ar.lastlinedefined, known, cache);
    if (!known) return "a function whose source text is unknown (chunk " + where + ")";
    it = cache.candidates.emplace(std::move(key), std::move(found)).first;
  }
  const std::vector<detail::SharedText>& candidates = it->second;
  const std::string lines = std::to_string(ar.linedefined) + "-" + std::to_string(ar.lastlinedefined);
  // Even a lone candidate is checked: another chunk may have been loaded under the same name.
  std::optional<detail::SharedText> picked;
  if (!candidates.empty()) picked = pick_candidate(L, fn, candidates, cache, chunk_name + "\n" + lines + "\n");
  const auto has_cdata = [](const detail::SharedText& t) { return has_cdata_literal(t.str()); };
  if (!picked && std::any_of(candidates.begin(), candidates.end(), has_cdata)) {
    return "a function with a cdata number literal (1LL, 0i), which does not travel";
  }
  if (!picked) return "a function whose text was not found at lines " + lines + " of " + where;
  origin.source = std::move(*picked);
  return origin;
}

int upvalue_slot(const detail::FunctionData& data, std::string_view name) {
  for (std::size_t i = 0; i < data.upvalue_names.size(); ++i) {
    if (data.upvalue_names[i] == name) return static_cast<int>(i);
  }
  return -1;
}

void push_rebuilt_function(lua_State* L, const detail::FunctionData& data, int makers) {
  lua_checkstack(L, 6);
  // Counted for the pool: code that is not the run's chunk now runs in it (lua_state_pool.hpp).
  note_pushed_function(L);
  const std::string& source = data.source.str();
  const std::string& chunk_name = data.chunk_name.str();
  const std::string where = "function from " + display_name(chunk_name) + ":" + std::to_string(data.line);
  if (!data.library_name.empty()) {
    if (!source.empty() || !data.upvalue_names.empty()) {
      refuse(L, "library function '" + data.library_name + "' comes with a text or upvalues");
    }
    lua_getfield(L, LUA_REGISTRYINDEX, kLibraryKey);
    if (lua_istable(L, -1)) {
      lua_pushlstring(L, data.library_name.data(), data.library_name.size());
      lua_rawget(L, -2);
      lua_remove(L, -2);
      if (lua_isfunction(L, -1)) return;
    }
    refuse(L, "library function '" + data.library_name + "' is not available here");
  }
  // Closures of one function (a thousand counters) share one compiled wrapper.
  std::string key = chunk_name + '\n' + std::to_string(data.line) + '\n';
  for (const std::string& name : data.upvalue_names) key.append(name).append(",");
  key.append("\n").append(source);
  bool compiled = false;
  if (makers != 0) {
    lua_pushlstring(L, key.data(), key.size());
    lua_rawget(L, makers);
    compiled = lua_isfunction(L, -1);
    if (!compiled) lua_pop(L, 1);
  }
  if (!compiled) {
    if (!source.empty() && source[0] == '\x1b') refuse(L, where + " is bytecode, which is never loaded");
    // The text's own faults are named before its upvalues'; load_maker checks the whole chunk.
    if (!is_one_function_expression(source)) refuse(L, "the text of " + where + " is not one function expression");
    if (has_cdata_literal(source)) refuse(L, where + " has a cdata number literal (1LL, 0i), which is not loaded");
    if (data.upvalue_names.size() > kMaxUpvalues) refuse(L, where + " has more than 60 upvalues");
    for (std::size_t i = 0; i < data.upvalue_names.size(); ++i) {
      const std::string& name = data.upvalue_names[i];
      if (!is_lua_identifier(name)) refuse(L, where + " has an upvalue name that is not a Lua name: '" + name.substr(0, 40) + "'");
      if (upvalue_slot(data, name) != static_cast<int>(i)) refuse(L, where + " has two upvalues named '" + name + "'");
    }
    switch (load_maker(L, source, data.upvalue_names, data.line, chunk_name.c_str())) {
      case MakerStatus::loaded: break;
      case MakerStatus::not_one_function: refuse(L, "the text of " + where + " is not one function expression");
      case MakerStatus::cdata: refuse(L, where + " has a cdata number literal (1LL, 0i), which is not loaded");
      case MakerStatus::not_compiled: {
        const std::string message(lua_view(L, -1));
        lua_pop(L, 1);
        refuse(L, where + " does not compile: " + message);
      }
    }
    // The closures it makes can be cut out of this text when they travel on.
    const bool padded = data.line > 1 && data.line <= kMaxPaddingLines;
    register_chunk(L, chunk_name, source, padded ? static_cast<int>(data.line) : 1);
    if (makers != 0) {
      lua_pushlstring(L, key.data(), key.size());
      lua_pushvalue(L, -2);
      lua_rawset(L, makers);
    }
  }
  lua_call(L, 0, 1);
  // And the function itself travels again without a search.
  const int fn = lua_gettop(L);
  push_registry_table(L, kFunctionsKey, "k");
  lua_pushvalue(L, fn);
  lua_pushlstring(L, source.data(), source.size());
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

}  // namespace sojourn::sandbox::lua
