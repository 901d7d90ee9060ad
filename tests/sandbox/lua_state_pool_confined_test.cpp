// The pool's skips after a run, each proven before it is taken (sandbox/lua/lua_state_pool.hpp,
// docs/sandbox.md): the text scan that keeps library tables out of a run's reach, the registry
// walk skipped when no C code wrote to it, and the bytecode scan that lets a run with no global
// write leave its globals to the next run. Each case also shows the skip is not taken where the
// proof fails.
#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <vector>

#include <luajit-2.1/lua.hpp>

#include "sandbox/lua/lua_bytecode.hpp"
#include "sandbox/lua/lua_source_scan.hpp"
#include "sandbox/lua/lua_state_pool.hpp"
#include "tests/sandbox/lua_state_pool_support.hpp"

using namespace lua_pool_test;  // NOLINT(google-build-using-namespace): the suite's helpers

TEST_CASE("the text scan passes only chunks that name a library to call one of its fields") {
  const std::vector<std::string> libraries = {"string", "table", "math", "coroutine", "node"};
  const std::vector<std::string> banned = {"_G", "getmetatable", "require_remote"};
  const auto passes = [&](std::string_view text) {
    return sojourn::sandbox::lua::names_tables_only_in_calls(text, libraries, banned);
  };
  // Passed: each library only as NAME.FIELD(, fields and methods of other values, names in
  // strings and comments.
  CHECK(passes("local v = node.call('kv.get', 'k'); return v.x + 1"));
  CHECK(passes("return math.floor(2.5) + string.len('abc'), table.concat({1, 2}, ',')"));
  CHECK(passes("local s = 'x'; return s:rep(2), s.len, #s"));
  CHECK(passes("local t = {}; t.string = 1; t.math = {}; return t.string, t:getmetatable()"));
  CHECK(passes("-- string.evil = 1\nreturn 'string.evil = 1', [[ _G.x = 1 ]], [==[getmetatable('')]==]"));
  CHECK(passes("local co = coroutine.create(function() return 1 end); return coroutine.resume(co)"));
  CHECK(passes("local t = setmetatable({}, {}); rawset(t, 'a', 1); return rawget(t, 'a'), pairs(t)"));
  // Refused: a library as a value, in any other form, and the banned names anywhere.
  CHECK_FALSE(passes("string.evil = 1"));
  CHECK_FALSE(passes("string['evil'] = 1"));
  CHECK_FALSE(passes("local s = string; s.evil = 1"));
  CHECK_FALSE(passes("rawset(string, 'x', 1)"));
  CHECK_FALSE(passes("setmetatable(math, {})"));
  CHECK_FALSE(passes("table:insert(1)"));  // table.insert(table, 1)
  CHECK_FALSE(passes("table.insert(math, 1)"));
  CHECK_FALSE(passes("pcall(table.insert, {}, 1)"));
  CHECK_FALSE(passes("local f = string.rep; return f('x', 2)"));
  CHECK_FALSE(passes("return math.pi"));
  CHECK_FALSE(passes("return string.rep 'x'"));
  CHECK_FALSE(passes("function string.evil() end"));
  CHECK_FALSE(passes("function node.call() end"));
  CHECK_FALSE(passes("return 'a' .. string"));
  CHECK_FALSE(passes("local t = {string = string}"));
  CHECK_FALSE(passes("getmetatable('').__index.evil = 1"));
  CHECK_FALSE(passes("_G.string.evil = 1"));
  CHECK_FALSE(passes("local m = require_remote('m')"));
  CHECK_FALSE(passes("local x = 'unfinished"));  // does not lex
}

TEST_CASE("a run whose text cannot reach a library skips the library comparison, and only such a run") {
  // A library changed behind the pool's back (from C, as no run can): a run the scan passes
  // does not compare, and its state goes back; any other run compares and gives it up.
  const auto tamper = [] {
    detail::clear_state_pool();
    ok_results(run("return 1", "alice"));
    detail::PooledStatePtr state = detail::take_pooled_state("alice");
    REQUIRE(state != nullptr);
    lua_getfield(state->L, LUA_GLOBALSINDEX, "math");
    lua_pushboolean(state->L, 1);
    lua_setfield(state->L, -2, "tampered");
    lua_pop(state->L, 1);
    detail::return_pooled_state(std::move(state), false);  // given back as if no run had reached it
    REQUIRE(detail::idle_pooled_states() == 1);
  };
  tamper();
  CHECK(ok_results(run("return math.floor(2.5)", "alice")).get(1).as_integer() == 2);
  CHECK(detail::idle_pooled_states() == 1);  // compared nothing: given back
  tamper();
  CHECK(ok_results(run("return math.pi > 3", "alice")).get(1).as_bool());
  CHECK(detail::idle_pooled_states() == 0);  // compared: given up
}

TEST_CASE("functions pushed from values into a run that passed the text scan still get the library comparison") {
  // The chunks below name no library: only the functions they are given do.
  const Value writer = ok_results(run("return function() string.evil = 1 end", "maker")).get(1);
  const Value by_name = ok_results(run("return getmetatable", "maker")).get(1);
  struct Case {
    const char* source;
    Value args;
  };
  const Case cases[] = {
      {"local f = ...; f(); return 1", Value::array({writer})},
      {"local gm = ...; gm('').__index.evil = 1; return 1", Value::array({by_name})},
  };
  for (const Case& c : cases) {
    CAPTURE(c.source);
    detail::clear_state_pool();
    CHECK(ok_results(run(c.source, "alice", kLimits, c.args)).get(1).as_integer() == 1);
    CHECK(detail::idle_pooled_states() == 0);
    CHECK(ok_results(run("return rawget(string, 'evil') == nil", "alice")).get(1).as_bool());
  }

  // A function in a host call's reply, called by a chunk the scan passes.
  struct Replies : HostCalls {
    Value reply;
    Result<Value> call(std::string_view, const Value&) override { return reply; }
  };
  Replies host;
  host.reply = writer;
  detail::clear_state_pool();
  CHECK(ok_results(run("local f = node.call('any'); f(); return 1", "alice", kLimits, {}, &host)).get(1).as_integer() == 1);
  CHECK(detail::idle_pooled_states() == 0);
  CHECK(ok_results(run("return rawget(string, 'evil') == nil", "alice")).get(1).as_bool());
}

TEST_CASE("a run whose text passes the scan still has the registry put back when it converted a function") {
  detail::PooledStatePtr prepared = detail::take_pooled_state("carol");
  REQUIRE(prepared != nullptr);
  const std::string baseline = detail::describe_registry(prepared->L);
  prepared.reset();
  // Each chunk names no library and no require_remote; each registers a text (a function
  // converted to a value: a result, a host call's argument) or rebuilds one.
  struct Echo final : HostCalls {
    Result<Value> call(std::string_view, const Value& args) override { return args.get(1); }
  };
  Echo echo;
  const char* sources[] = {
      "local function g() return 1 end; return g",
      "local function g() return 1 end; local back = node.call('echo', g); return 1",
      "local t = {f = function() end}; return t",
  };
  for (const char* source : sources) {
    CAPTURE(source);
    detail::clear_state_pool();
    ok_results(run(source, "alice", kLimits, {}, &echo));
    // Looked at as the run's reset left it (idle_state_of would reset it once more).
    REQUIRE(detail::idle_pooled_states() == 1);
    detail::PooledStatePtr state = detail::take_pooled_state("alice");
    REQUIRE(state != nullptr);
    CHECK(detail::describe_registry(state->L) == baseline);
  }
}

TEST_CASE("a run whose text passes the scan and that wrote nothing to the registry skips its walk, and only such a run") {
  // A registry key added behind the pool's back (from C, as no run's code can): a run that
  // wrote nothing there leaves it (the walk is skipped), any other run's reset removes it.
  const auto tamper = [] {
    detail::clear_state_pool();
    ok_results(run("return 1", "alice"));
    detail::PooledStatePtr state = detail::take_pooled_state("alice");
    REQUIRE(state != nullptr);
    lua_pushboolean(state->L, 1);
    lua_setfield(state->L, LUA_REGISTRYINDEX, "tampered");
    detail::return_pooled_state(std::move(state), false, false);
    REQUIRE(detail::idle_pooled_states() == 1);
  };
  const auto has_key = [] {  // looked at before the state goes back (unwalked) to the pool
    REQUIRE(detail::idle_pooled_states() == 1);
    detail::PooledStatePtr state = detail::take_pooled_state("alice");
    REQUIRE(state != nullptr);
    const bool found = detail::describe_registry(state->L).find("tampered") != std::string::npos;
    detail::return_pooled_state(std::move(state), false, false);
    return found;
  };
  tamper();
  ok_results(run("return math.floor(2.5)", "alice"));
  CHECK(has_key());  // not walked
  tamper();
  ok_results(run("local function g() end; return g", "alice"));  // registers its text
  CHECK_FALSE(has_key());
  tamper();
  ok_results(run("return math.pi", "alice"));  // the text may reach a library
  CHECK_FALSE(has_key());
}

TEST_CASE("the bytecode scan finds every global write of a text, and only those") {
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  const auto no_global_write = [L](const char* source) {
    REQUIRE(luaL_loadstring(L, source) == 0);
    const bool answer = sojourn::sandbox::lua::writes_no_global(L);
    lua_pop(L, 1);
    return answer;
  };
  // Writes to locals, upvalues, fields and the chunk's own tables: no global.
  for (const char* source : {"local v = node.call('kv.get', 'k'); return v.x + 1", "local x; x = 1; return x",
                             "local a, b = 1, 2; a, b = b, a; return a", "for i = 1, 3 do local z = i end",
                             "local t = {}; t.x = 1; t[2] = 3; return t", "local function f() end; return f",
                             "local u; return function() u = 1; return z end", "return {x = 1, y = 2}",
                             "local x = 1; do local y; y = x end; if x then x = 2 end"}) {
    CAPTURE(source);
    CHECK(no_global_write(source));
  }
  // A free name assigned anywhere, in any nested function, is a global write.
  for (const char* source : {"x = 1", "local a; a, b = 1, 2", "function g() end", "local function f() y = 2 end",
                             "return function() return function() z = 3 end end", "do local x end; x = 1",
                             "for i = 1, 2 do end; i = 1", "local t = {f = function() w = 1 end}"}) {
    CAPTURE(source);
    CHECK_FALSE(no_global_write(source));
  }
  lua_close(L);
}

TEST_CASE("a run that provably wrote no global leaves its globals to the next run, which never sees a write") {
  const auto kept = [] {
    REQUIRE(detail::idle_pooled_states() == 1);
    detail::PooledStatePtr state = detail::take_pooled_state("alice");
    REQUIRE(state != nullptr);
    const bool answer = state->globals_kept;
    // Given back as it came, no run since its reset: what was kept stays kept.
    detail::return_pooled_state(std::move(state), false, false);
    return answer;
  };
  detail::clear_state_pool();
  const char* quiet = "local v = math.floor(2.5); return v";
  CHECK(ok_results(run(quiet, "alice")).get(1).as_integer() == 2);
  CHECK(kept());
  // Each writing run runs on the kept table (the first) or a copy; none is kept, and the next
  // run sees none of their writes.
  const char* writers[] = {"leaked = 1; return 1", "_G.leaked = 1; return 1", "rawset(_G, 'leaked', 1); return 1",
                           "function leaked() end; return 1", "local function f() leaked = 1 end; f(); return 1",
                           "math.floor = nil; leaked = 1; return 1", "setmetatable(_G, {}); return 1"};
  for (const char* writer : writers) {
    CAPTURE(writer);
    CHECK(ok_results(run(quiet, "alice")).get(1).as_integer() == 2);
    CHECK(ok_results(run(writer, "alice")).get(1).as_integer() == 1);
    if (detail::idle_pooled_states() == 1) CHECK_FALSE(kept());
    CHECK(ok_results(run("return rawget(_G, 'leaked') == nil and getmetatable(_G) == nil and math.floor ~= nil", "alice"))
              .get(1)
              .as_bool());
    detail::clear_state_pool();
  }
  // A function from the arguments wrote a global into a run whose own text writes none.
  const Value writer = ok_results(run("return function() leaked = 1 end", "maker")).get(1);
  detail::clear_state_pool();
  CHECK(ok_results(run(quiet, "alice")).get(1).as_integer() == 2);
  CHECK(ok_results(run("local f = ...; f(); return 1", "alice", kLimits, Value::array({writer}))).get(1).as_integer() == 1);
  CHECK(ok_results(run("return rawget(_G, 'leaked') == nil", "alice")).get(1).as_bool());
  // The kept table really is used again: a global added behind the pool's back (from C, as no
  // run can) into the kept table is seen by the next run, and gone after a run that wrote one.
  detail::clear_state_pool();
  CHECK(ok_results(run(quiet, "alice")).get(1).as_integer() == 2);
  {
    REQUIRE(detail::idle_pooled_states() == 1);
    detail::PooledStatePtr state = detail::take_pooled_state("alice");
    REQUIRE(state != nullptr);
    REQUIRE(state->globals_kept);
    // The kept table stays installed as the idle state's globals (never the prepared ones).
    lua_pushvalue(state->L, LUA_GLOBALSINDEX);
    REQUIRE(lua_istable(state->L, -1));
    lua_rawgeti(state->L, LUA_REGISTRYINDEX, state->globals_ref);
    REQUIRE_FALSE(lua_rawequal(state->L, -1, -2));
    lua_pop(state->L, 1);
    lua_pushboolean(state->L, 1);
    lua_setfield(state->L, -2, "tampered");
    lua_pop(state->L, 1);
    detail::return_pooled_state(std::move(state), false, false);
  }
  CHECK(ok_results(run("local t = tampered; return t == true", "alice")).get(1).as_bool());
  CHECK(ok_results(run("other = 1; return 1", "alice")).get(1).as_integer() == 1);  // ran on it, wrote: not kept
  CHECK(ok_results(run("local t = tampered; return t == nil", "alice")).get(1).as_bool());
}

TEST_CASE("a run that could not reach the decoy leaves it, and its hook parked and its chunk, to the next run") {
  detail::clear_state_pool();
  const char* quiet = "local v = math.floor(2.5); return v";
  CHECK(ok_results(run(quiet, "alice")).get(1).as_integer() == 2);
  // The decoy changed behind the pool's back (from C, as no run that passed the scan can): the
  // next quiet run does not set it up again, so a run after it still sees the change; that run
  // names getmetatable, and the run after it sees the decoy as prepared again.
  {
    REQUIRE(detail::idle_pooled_states() == 1);
    detail::PooledStatePtr state = detail::take_pooled_state("alice");
    REQUIRE(state != nullptr);
    CHECK(state->decoy_intact);
    CHECK(lua_gethookmask(state->L) == LUA_MASKCOUNT);  // parked, not off
    lua_rawgeti(state->L, LUA_REGISTRYINDEX, state->string_meta_ref);
    lua_getfield(state->L, -1, "__metatable");
    REQUIRE(lua_istable(state->L, -1));
    lua_pushboolean(state->L, 1);
    lua_setfield(state->L, -2, "mark");
    lua_pop(state->L, 2);
    detail::return_pooled_state(std::move(state), false, false);
  }
  CHECK(ok_results(run(quiet, "alice")).get(1).as_integer() == 2);
  const char* check = "local d = getmetatable(''); return rawget(d, 'mark') == nil, d.__index == string";
  Value r = ok_results(run(check, "alice"));
  CHECK_FALSE(r.get(1).as_bool());  // the skip was taken
  CHECK(r.get(2).as_bool());
  r = ok_results(run(check, "alice"));
  CHECK(r.get(1).as_bool());
  CHECK(r.get(2).as_bool());
  // Every way a run can change the decoy, right after a quiet run (whose decoy is left as it
  // is): the run after it never sees the change.
  const char* changes[] = {
      "getmetatable('').__index = {upper = function() return 'decoy' end}; return 1",
      "getmetatable('').__index = nil; return 1",
      "getmetatable('').mark = 1; return 1",
      "setmetatable(getmetatable(''), {__index = function() return 'leak' end}); return 1",
  };
  for (const char* change : changes) {
    CAPTURE(change);
    detail::clear_state_pool();
    CHECK(ok_results(run(quiet, "alice")).get(1).as_integer() == 2);
    CHECK(ok_results(run(quiet, "alice")).get(1).as_integer() == 2);
    CHECK(ok_results(run(change, "alice")).get(1).as_integer() == 1);
    REQUIRE(detail::idle_pooled_states() == 1);
    r = ok_results(run("local d = getmetatable(''); return d.__index == string, rawget(d, 'mark') == nil,"
                       "getmetatable(d) == nil, ('b'):upper()",
                       "alice"));
    CHECK(r.get(1).as_bool());
    CHECK(r.get(2).as_bool());
    CHECK(r.get(3).as_bool());
    CHECK(r.get(4).as_string() == "B");
  }
  // The parked hook is armed again for each run: the CPU budget still stops a loop whose text
  // passes the scan, after quiet runs and again after the kill.
  detail::clear_state_pool();
  const Limits tight{200'000, 16u << 20, 5000};
  const char* spin = "local i = 0; while true do i = i + 1 end";
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    CHECK(ok_results(run(quiet, "alice", tight)).get(1).as_integer() == 2);
    CHECK(ok_results(run(quiet, "alice", tight)).get(1).as_integer() == 2);
    const Result<Value> killed = run(spin, "alice", tight);
    REQUIRE_FALSE(killed.ok());
    CHECK(killed.error().code == sojourn::Errc::cpu_limit);
  }
  // The last chunk is taken again only for the same text under the same name (the name is in
  // the error's position).
  detail::clear_state_pool();
  const char* where = "local ok, e = pcall(function() error('boom') end); return e";
  for (const char* name : {"first", "first", "second", "second", "first"}) {
    CAPTURE(name);
    CHECK(ok_results(run(where, "alice", kLimits, {}, nullptr, name)).get(1).as_string() == std::string(name) + ":1: boom");
    CHECK(detail::idle_pooled_states() == 1);
  }
  CHECK(ok_results(run("local v = math.floor(3); return v", "alice", kLimits, {}, nullptr, "first")).get(1).as_integer() == 3);
  CHECK(ok_results(run(where, "alice", kLimits, {}, nullptr, "first")).get(1).as_string() == "first:1: boom");
}
