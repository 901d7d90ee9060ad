// The pool of prepared trusted states (sandbox/lua/lua_state_pool.hpp): nothing a run does
// reaches the next run of the same state, the chunk cache never confuses two texts, and limits
// and errors are those of a fresh state.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <luajit-2.1/lua.hpp>

#include "sandbox/lua/lua_bytecode.hpp"
#include "sandbox/lua/lua_source_scan.hpp"
#include "sandbox/lua/lua_state_pool.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::RunInput;
namespace detail = sojourn::sandbox::detail;

constexpr Limits kLimits{10'000'000, 16u << 20, 5000};

Result<Value> run(std::string_view source, std::string_view principal, Limits limits = kLimits, Value args = {},
                  HostCalls* host = nullptr, std::string_view chunk_name = {}) {
  RunInput input;
  input.source = source;
  input.chunk_name = chunk_name;
  input.args = std::move(args);
  input.limits = limits;
  input.principal = principal;
  return sojourn::sandbox::run_lua(input, host);
}

// The state the pool would give `principal` next (taken out and put back), or null when none
// of its states is idle.
lua_State* idle_state_of(std::string_view principal) {
  const std::size_t idle = detail::idle_pooled_states();
  detail::PooledStatePtr state = detail::take_pooled_state(principal);
  REQUIRE(state != nullptr);
  lua_State* L = detail::idle_pooled_states() < idle ? state->L : nullptr;
  if (L != nullptr) detail::return_pooled_state(std::move(state));
  return L;
}

Value ok_results(const Result<Value>& r) {
  if (!r.ok()) FAIL(r.error().message);
  return *r;
}

}  // namespace

TEST_CASE("a pooled state serves the next run of its principal, and only of its principal") {
  detail::clear_state_pool();
  CHECK(ok_results(run("return 1", "alice")).get(1).as_integer() == 1);
  CHECK(detail::idle_pooled_states() == 1);
  lua_State* first = idle_state_of("alice");
  REQUIRE(first != nullptr);
  CHECK(ok_results(run("return 2", "alice")).get(1).as_integer() == 2);
  CHECK(idle_state_of("alice") == first);
  CHECK(idle_state_of("bob") == nullptr);  // bob's runs never get alice's state
  // No principal: a fresh state, never pooled.
  CHECK(ok_results(run("return 3", "")).get(1).as_integer() == 3);
  CHECK(detail::idle_pooled_states() == 1);
}

TEST_CASE("a run cannot see the globals or the _G metatable of the run before it") {
  detail::clear_state_pool();
  ok_results(run("x = 42; _G.y = 'kept?'; print = nil; setmetatable(_G, {__index = function() return 'leak' end});"
                 "return 1",
                 "alice"));
  REQUIRE(detail::idle_pooled_states() == 1);  // globals are the run's own: the state goes back
  const Value r = ok_results(run("return x == nil, y == nil, getmetatable(_G) == nil, zzz == nil, type(print)", "alice"));
  CHECK(r.get(1).as_bool());
  CHECK(r.get(2).as_bool());
  CHECK(r.get(3).as_bool());
  CHECK(r.get(4).as_bool());
  CHECK(r.get(5).as_string() == "function");
}

TEST_CASE("a run that changed a library table gives no state back") {
  struct Change {
    const char* source;
    bool gives_back;
  };
  const Change changes[] = {
      {"string.evil = 1", false},
      {"table.insert = nil", false},
      {"math.pi = 3", false},
      {"node.extra = true", false},
      {"coroutine.create = nil", false},
      {"setmetatable(math, {__index = function() return 'leak' end})", false},
      {"rawset(string, 'x', 1)", false},
      {"getmetatable('').__index.upper = function() return 'changed' end", false},
      // Metatables that getmetatable would answer with their __metatable field, not nil.
      {"setmetatable(string, {__metatable = false})", false},
      {"setmetatable(coroutine, {__metatable = 'locked', __index = function() return 'leak' end})", false},
      {"table.insert(math, 1)", false},
      {"string.evil = 1; string.evil = nil", true},  // put back as it was: nothing to see
  };
  for (const Change& change : changes) {
    CAPTURE(change.source);
    detail::clear_state_pool();
    ok_results(run(change.source, "alice"));
    CHECK(detail::idle_pooled_states() == (change.gives_back ? 1u : 0u));
    const Value r = ok_results(run("return string.evil == nil, type(table.insert), math.pi > 3.14, node.extra == nil,"
                                   "type(coroutine.create), getmetatable(math) == nil, rawget(string, 'x') == nil,"
                                   "('a'):upper()",
                                   "alice"));
    CHECK(r.get(1).as_bool());
    CHECK(r.get(2).as_string() == "function");
    CHECK(r.get(3).as_bool());
    CHECK(r.get(4).as_bool());
    CHECK(r.get(5).as_string() == "function");
    CHECK(r.get(6).as_bool());
    CHECK(r.get(7).as_bool());
    CHECK(r.get(8).as_string() == "A");
  }
}

TEST_CASE("changes to the string metatable's decoy do not outlive the run") {
  detail::clear_state_pool();
  // Within the run, string.upper replaced is what s:upper() calls, as in a fresh state.
  const Value replaced = ok_results(run("string.upper = function() return 'replaced' end; return ('a'):upper()", "alice"));
  CHECK(replaced.get(1).as_string() == "replaced");
  CHECK(detail::idle_pooled_states() == 0);
  const Value first = ok_results(run("local mt = getmetatable(''); mt.__index = {upper = function() return 'decoy' end};"
                                     "mt.mark = 1; return ('a'):upper()",
                                     "alice"));
  CHECK(first.get(1).as_string() == "A");  // the decoy changes nothing
  REQUIRE(detail::idle_pooled_states() == 1);
  const Value second = ok_results(run("local mt = getmetatable(''); return ('a'):upper(), mt.mark == nil, mt.__index.upper('b'),"
                                      "('c'):rep(2)",
                                      "alice"));
  CHECK(second.get(1).as_string() == "A");
  CHECK(second.get(2).as_bool());
  CHECK(second.get(3).as_string() == "B");
  CHECK(second.get(4).as_string() == "cc");
}

TEST_CASE("a coroutine left suspended by a run is unreachable from the next") {
  detail::clear_state_pool();
  ok_results(run("co = coroutine.create(function() while true do coroutine.yield(1) end end); coroutine.resume(co);"
                 "w = coroutine.wrap(function() coroutine.yield(2) end); w(); return 1",
                 "alice"));
  REQUIRE(detail::idle_pooled_states() == 1);
  const Value r = ok_results(run("return co == nil and w == nil", "alice"));
  CHECK(r.get(1).as_bool());
}

TEST_CASE("a pooled state that scanned one text still refuses cdata literals in the next") {
  detail::clear_state_pool();
  CHECK(ok_results(run("return 1", "alice")).get(1).as_integer() == 1);
  REQUIRE(detail::idle_pooled_states() == 1);
  for (const char* source : {"return 1LL", "return 1 + 1LL", "return 1"}) {
    CAPTURE(source);
    const Result<Value> r = run(source, "alice");
    if (std::string_view(source) == "return 1") {
      CHECK(ok_results(r).get(1).as_integer() == 1);  // the scanned text runs as before
      continue;
    }
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::sandbox_refused);
    CHECK(r.error().message == "refused by the sandbox: cdata number literals (1LL, 1ULL, 1i) are not accepted");
    CHECK(detail::idle_pooled_states() == 1);  // the refusal took nothing from the pool
  }
}

TEST_CASE("the registry of a returned state is as it was prepared") {
  detail::clear_state_pool();
  // A just-prepared state of another principal describes the registry's prepared shape.
  detail::PooledStatePtr prepared = detail::take_pooled_state("carol");
  REQUIRE(prepared != nullptr);
  const std::string baseline = detail::describe_registry(prepared->L);
  prepared.reset();
  // A run that registers its chunk, rebuilds a function of its arguments and returns functions.
  Value args = Value::array({Value::function("function(a) return a * 2 end", "=agent", 1)});
  const Value r = ok_results(run("local f = ...; local function g() return f(2) end; return g, f", "alice", kLimits, args));
  CHECK(r.get(1).is_function());
  lua_State* L = idle_state_of("alice");
  REQUIRE(L != nullptr);
  CHECK(detail::describe_registry(L) == baseline);
}

TEST_CASE("the chunk cache tells apart texts that differ anywhere, and chunk names") {
  detail::clear_state_pool();
  // Same length, same start and end: only the full text tells them apart.
  std::string a = "return '" + std::string(4000, 'a') + "', 1";
  std::string b = a;
  b[2000] = 'b';
  const Value ra = ok_results(run(a, "alice"));
  const Value rb = ok_results(run(b, "alice"));
  CHECK(ra.get(1).as_string() != rb.get(1).as_string());
  CHECK(ra.get(1).as_string()[1992] == 'a');
  CHECK(rb.get(1).as_string()[1992] == 'b');
  CHECK(ok_results(run(a, "alice")).get(1).as_string() == ra.get(1).as_string());
  // The same text under two names: each error names its own chunk.
  auto one = run("error('boom')", "alice", kLimits, {}, nullptr, "one");
  auto two = run("error('boom')", "alice", kLimits, {}, nullptr, "two");
  REQUIRE_FALSE(one.ok());
  REQUIRE_FALSE(two.ok());
  CHECK(one.error().message == "Lua error at one:1: boom");
  CHECK(two.error().message == "Lua error at two:1: boom");
  // A cached chunk sees each run's arguments and globals, not the first one's.
  CHECK(ok_results(run("g = (g or 0) + ...; return g", "alice", kLimits, Value::array({Value(5)}))).get(1).as_integer() == 5);
  CHECK(ok_results(run("g = (g or 0) + ...; return g", "alice", kLimits, Value::array({Value(7)}))).get(1).as_integer() == 7);
}

TEST_CASE("errors and limits of a pooled run are those of a fresh state") {
  struct Case {
    const char* source;
    Limits limits;
  };
  const Case cases[] = {
      {"error('boom')", kLimits},
      {"error({})", kLimits},
      {"local x = nil; return x.y", kLimits},
      {"while true do end", Limits{100000, 16u << 20, 5000}},
      {"pcall(function() while true do end end) return 1", Limits{100000, 16u << 20, 5000}},
      {"local ok = xpcall(function() while true do end end, function() return 1 end) return ok", Limits{100000, 16u << 20, 5000}},
      {"while true do end", Limits{1'000'000'000'000, 16u << 20, 30}},
      {"local t = {} for i = 1, 1e7 do t[i] = i end return #t", Limits{1'000'000'000, 1u << 20, 5000}},
      {"local s = string.rep('x', 2 * 1024 * 1024) return #s", Limits{1'000'000'000, 1u << 20, 5000}},
      {"local t = {} for i = 1, 1e7 do t[i] = {} end", Limits{1'000'000'000, 512u << 10, 5000}},
      {"local ok, e = pcall(function() local t = {} for i = 1, 1e7 do t[i] = i end end) return ok, e",
       Limits{1'000'000'000, 1u << 20, 5000}},
      {"return coroutine.create(function() end)", kLimits},
      {"\x1b" "LJ", kLimits},
      {"return 1LL", kLimits},
      {"local t = {} for i = 1, 20000 do t[i] = i end return #t", Limits{1'000'000'000, 1u << 20, 5000}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.source);
    detail::clear_state_pool();
    ok_results(run("local warm = {} for i = 1, 1000 do warm[i] = tostring(i) end return 1", "alice", c.limits));
    const Result<Value> fresh = run(c.source, "", c.limits);
    const Result<Value> pooled = run(c.source, "alice", c.limits);
    REQUIRE(fresh.ok() == pooled.ok());
    if (fresh.ok()) {
      CHECK(sojourn::encode_value(*fresh) == sojourn::encode_value(*pooled));
    } else {
      CHECK(fresh.error().code == pooled.error().code);
      CHECK(fresh.error().message == pooled.error().message);
      // A failed run's state is thrown away (a refused text never takes one); the next run
      // gets a state that works.
      CHECK(detail::idle_pooled_states() == (fresh.error().code == Errc::sandbox_refused ? 1u : 0u));
      CHECK(ok_results(run("return 1 + 1", "alice")).get(1).as_integer() == 2);
    }
  }
}

TEST_CASE("garbage left by earlier runs is not charged to the next run's memory limit") {
  detail::clear_state_pool();
  const Limits tight{1'000'000'000, 512u << 10, 5000};
  for (int i = 0; i < 200; ++i) {
    // ~150 KB of garbage each run, live at most ~150 KB of the 512 KiB.
    auto r = run("local t = {} for i = 1, 4000 do t[i] = 'item ' .. i end return #t", "alice", tight);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  }
  CHECK(detail::idle_pooled_states() == 1);
}

namespace {

// A host call that runs another chunk of the same principal on the same thread.
struct NestedRun final : HostCalls {
  Result<Value> call(std::string_view, const Value& args) override {
    auto inner = run("inner = true; return ... * 10", "alice", kLimits, args);
    if (!inner.ok()) return inner.error();
    return inner->get(1);
  }
};

}  // namespace

TEST_CASE("a run started from a host call of a pooled run gets a state of its own") {
  detail::clear_state_pool();
  NestedRun host;
  const Value r = ok_results(run("outer = true; local v = node.call('nested', 4); return v, inner == nil", "alice", kLimits, {}, &host));
  CHECK(r.get(1).as_integer() == 40);
  CHECK(r.get(2).as_bool());
  CHECK(detail::idle_pooled_states() == 2);
}

TEST_CASE("concurrent runs on several threads each have a state of their own") {
  detail::clear_state_pool();
  constexpr int kThreads = 4;
  constexpr int kRuns = 150;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string principal = t % 2 == 0 ? "alice" : "bob";
      for (int i = 0; i < kRuns; ++i) {
        // A state shared by two runs at once would see the other's global or table entries.
        auto r = run("n = (n or 0) + 1; _G.m = (_G.m or 0) + 1; local t = {} for i = 1, 200 do t[i] = i end;"
                     "return n, m, #t + ...",
                     principal, kLimits, Value::array({Value(i)}));
        if (!r.ok() || r->get(1).as_integer() != 1 || r->get(2).as_integer() != 1 || r->get(3).as_integer() != 200 + i) {
          ++wrong;
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  CHECK(wrong.load() == 0);
  CHECK(detail::idle_pooled_states() >= 1);
  CHECK(detail::idle_pooled_states() <= kThreads);
}

namespace {

// Every registry entry of `L` whose key is a string or a number, as key -> the value's
// identity (lua_topointer for tables and functions, the type name otherwise).
std::map<std::string, std::string> registry_identities(lua_State* L) {
  std::map<std::string, std::string> out;
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX) != 0) {
    std::string key;
    if (lua_type(L, -2) == LUA_TSTRING) key = lua_tostring(L, -2);
    if (lua_type(L, -2) == LUA_TNUMBER) key = "#" + std::to_string(lua_tonumber(L, -2));
    std::string value = lua_typename(L, lua_type(L, -1));
    if (lua_istable(L, -1) || lua_isfunction(L, -1)) value += std::to_string(reinterpret_cast<std::uintptr_t>(lua_topointer(L, -1)));
    if (!key.empty()) out[key] = value;
    lua_pop(L, 1);
  }
  return out;
}

}  // namespace

TEST_CASE("a prepared registry entry a run removed or replaced is put back, and an added one removed") {
  detail::clear_state_pool();
  ok_results(run("return 1", "alice"));
  detail::PooledStatePtr state = detail::take_pooled_state("alice");
  REQUIRE(state != nullptr);
  lua_State* L = state->L;
  const auto before = registry_identities(L);
  REQUIRE(before.size() >= 4);
  // What C code called by a run could do to the registry (scripts cannot reach it): remove a
  // prepared string key and a prepared integer slot, replace two prepared values, add keys.
  // (The slots the reset itself reads first, the library list and the housekeeping function,
  // are left: changed, they make the reset fail and the state is thrown away.)
  REQUIRE(state->copy_ref > 0);
  std::vector<std::string> string_keys;
  for (const auto& [key, value] : before) {
    if (key[0] != '#' && key != "sojourn.remote_modules") string_keys.push_back(key);  // not a per-run table
  }
  REQUIRE(string_keys.size() >= 2);
  lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, string_keys[0].c_str());
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, string_keys[1].c_str());
  lua_pushnil(L);
  lua_rawseti(L, LUA_REGISTRYINDEX, state->globals_ref);
  lua_pushliteral(L, "replaced");
  lua_rawseti(L, LUA_REGISTRYINDEX, state->copy_ref);
  REQUIRE(state->pool_ref > 0);  // the pool's own tables (chunk cache, globals list, libraries)
  lua_pushliteral(L, "replaced too");
  lua_rawseti(L, LUA_REGISTRYINDEX, state->pool_ref);
  lua_pushliteral(L, "added");
  lua_setfield(L, LUA_REGISTRYINDEX, "a.run.added.this");
  lua_pushboolean(L, 1);
  lua_rawseti(L, LUA_REGISTRYINDEX, 9999);
  CHECK(registry_identities(L) != before);
  detail::return_pooled_state(std::move(state));
  lua_State* again = idle_state_of("alice");
  REQUIRE(again == L);
  CHECK(registry_identities(L) == before);
  // And the state still runs as prepared.
  const Value r = ok_results(run("return type(string.upper), ('a'):upper(), x == nil", "alice"));
  CHECK(r.get(1).as_string() == "function");
  CHECK(r.get(2).as_string() == "A");
  CHECK(r.get(3).as_bool());
}

TEST_CASE("the string decoy a run changed is never what the next run sees") {
  const char* changes[] = {
      "getmetatable('').__index = {upper = function() return 'decoy' end}",
      "getmetatable('').__index = nil",
      "getmetatable('').mark = 1",
      "setmetatable(getmetatable(''), {__index = function() return 'leak' end})",
      "local d = getmetatable(''); d.__index = nil; d.other = string",
  };
  for (const char* change : changes) {
    CAPTURE(change);
    detail::clear_state_pool();
    ok_results(run(change, "alice"));
    REQUIRE(detail::idle_pooled_states() == 1);
    const Value r = ok_results(run("local d = getmetatable(''); return d.__index == string, rawget(d, 'mark') == nil,"
                                   "getmetatable(d) == nil, d.other == nil, d.__index.upper('b'), next(d, next(d)) == nil",
                                   "alice"));
    CHECK(r.get(1).as_bool());
    CHECK(r.get(2).as_bool());
    CHECK(r.get(3).as_bool());
    CHECK(r.get(4).as_bool());
    CHECK(r.get(5).as_string() == "B");
    CHECK(r.get(6).as_bool());
  }
}

TEST_CASE("a pooled state's freed small blocks serve its next allocations; the count and the cap are unchanged") {
  using detail::SmallBlockCache;
  detail::RunContext ctx;
  ctx.byte_cap = std::size_t{1} << 20;
  ctx.block_cache = std::make_unique<SmallBlockCache>();
  void* a = detail::capped_alloc(&ctx, nullptr, 0, 40);
  REQUIRE(a != nullptr);
  CHECK(ctx.bytes_in_use == 40);
  CHECK(detail::capped_alloc(&ctx, a, 40, 0) == nullptr);
  CHECK(ctx.bytes_in_use == 0);
  CHECK(ctx.block_cache->cached_bytes == 48);  // kept, as a block of its class (33..48 bytes)
  void* b = detail::capped_alloc(&ctx, nullptr, 0, 33);
  CHECK(b == a);
  CHECK(ctx.block_cache->cached_bytes == 0);
  CHECK(ctx.bytes_in_use == 33);
  std::memset(b, 0x5a, 48);  // the whole class size is the block's
  // Grown and shrunk through the heap, then freed: it serves its new class whole.
  b = detail::capped_alloc(&ctx, b, 33, 100);
  REQUIRE(b != nullptr);
  CHECK(ctx.bytes_in_use == 100);
  b = detail::capped_alloc(&ctx, b, 100, 20);
  REQUIRE(b != nullptr);
  CHECK(ctx.bytes_in_use == 20);
  detail::capped_alloc(&ctx, b, 20, 0);
  CHECK(ctx.block_cache->cached_bytes == 32);
  void* c = detail::capped_alloc(&ctx, nullptr, 0, 32);
  CHECK(c == b);
  std::memset(c, 0x5a, 32);
  // The cap refuses as before: cached blocks are not room.
  ctx.byte_cap = ctx.bytes_in_use + 10;
  CHECK(detail::capped_alloc(&ctx, nullptr, 0, 16) == nullptr);
  CHECK(ctx.allocation_refused);
  ctx.allocation_refused = false;
  ctx.byte_cap = std::size_t{64} << 20;
  detail::capped_alloc(&ctx, c, 32, 0);
  // Bounded: many blocks freed at once (a collection's sweep) keep at most kMaxCachedBytes.
  std::vector<void*> blocks;
  for (int i = 0; i < 4000; ++i) blocks.push_back(detail::capped_alloc(&ctx, nullptr, 0, 200));
  for (void* block : blocks) detail::capped_alloc(&ctx, block, 200, 0);
  CHECK(ctx.bytes_in_use == 0);
  CHECK(ctx.block_cache->cached_bytes <= SmallBlockCache::kMaxCachedBytes);
  CHECK(ctx.block_cache->cached_bytes >= SmallBlockCache::kMaxCachedBytes - 256);
  // Larger blocks never wait in the cache.
  const std::size_t before = ctx.block_cache->cached_bytes;
  void* big = detail::capped_alloc(&ctx, nullptr, 0, 4096);
  detail::capped_alloc(&ctx, big, 4096, 0);
  CHECK(ctx.block_cache->cached_bytes == before);
}

TEST_CASE("the chunk cache started over after many texts still answers each text with its own chunk") {
  detail::clear_state_pool();
  // More distinct texts than a state caches: the cache starts over in the pool's table; the
  // state stays pooled, its registry as prepared, and every text still runs as itself.
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 40; ++i) {
      const std::string source = "return " + std::to_string(i) + " + ...";
      const Value r = ok_results(run(source, "alice", kLimits, Value::array({Value(std::int64_t{round})})));
      CHECK(r.get(1).as_integer() == i + round);
    }
  }
  CHECK(detail::idle_pooled_states() == 1);
  detail::PooledStatePtr fresh = detail::take_pooled_state("carol");
  REQUIRE(fresh != nullptr);
  const std::string baseline = detail::describe_registry(fresh->L);
  fresh.reset();
  lua_State* L = idle_state_of("alice");
  REQUIRE(L != nullptr);
  CHECK(detail::describe_registry(L) == baseline);
}

namespace {

// A host call given a function: runs another chunk of the same principal that returns a
// function of its own (its own state, its own deferred text), then answers both.
struct FunctionEcho final : HostCalls {
  Value inner;
  Result<Value> call(std::string_view, const Value& args) override {
    auto r = run("local function h() return 'inner' end\nreturn h", "alice", kLimits, {}, nullptr, "=inner");
    if (!r.ok()) return r.error();
    inner = r->get(1);
    return args.get(1);
  }
};

}  // namespace

TEST_CASE("a pooled run's functions travel with its own text, registered when first converted") {
  detail::clear_state_pool();
  // The same chunk name with another text first: the cached chunk and a registration of that
  // text must not be what the next run's functions are cut from.
  const Value first = ok_results(run("return function() return 'first' end", "alice", kLimits, {}, nullptr, "=same"));
  REQUIRE(first.get(1).is_function());
  CHECK(first.get(1).function_source().find("'first'") != std::string::npos);
  FunctionEcho host;
  const Value r = ok_results(run("local function f() return 'f' end\n"
                                 "local g = node.call('echo', f)\n"
                                 "local function k() return 'k' end\n"
                                 "return f, k, g, g()",
                                 "alice", kLimits, {}, &host, "=same"));
  REQUIRE(r.get(1).is_function());
  CHECK(r.get(1).function_source().find("'f'") != std::string::npos);
  REQUIRE(r.get(2).is_function());
  CHECK(r.get(2).function_source().find("'k'") != std::string::npos);
  REQUIRE(r.get(3).is_function());
  CHECK(r.get(4).as_string() == "f");
  REQUIRE(host.inner.is_function());
  CHECK(host.inner.function_source().find("'inner'") != std::string::npos);
  // A run that converts no function leaves no registration behind either.
  detail::PooledStatePtr prepared = detail::take_pooled_state("carol");
  REQUIRE(prepared != nullptr);
  const std::string baseline = detail::describe_registry(prepared->L);
  prepared.reset();
  detail::clear_state_pool();
  ok_results(run("local function f() return 1 end; return f() + 1", "alice"));
  lua_State* L = idle_state_of("alice");
  REQUIRE(L != nullptr);
  CHECK(detail::describe_registry(L) == baseline);
  CHECK(ok_results(run("return function() return 'again' end", "alice", kLimits, {}, nullptr, "=same")).get(1).function_source().find("'again'") !=
        std::string::npos);
}

TEST_CASE("a library field holding 0 that a run set to -0 gives no state back") {
  // No library field holds 0 today: the test gives math one, as if prepared with it.
  const auto prepare = [] {
    detail::clear_state_pool();
    ok_results(run("return 1", "alice"));
    detail::PooledStatePtr state = detail::take_pooled_state("alice");
    REQUIRE(state != nullptr);
    lua_State* L = state->L;
    lua_getfield(L, LUA_GLOBALSINDEX, "math");
    lua_pushnumber(L, 0);
    lua_setfield(L, -2, "zero");
    lua_pop(L, 1);
    detail::refill_library_list(*state);
    detail::return_pooled_state(std::move(state));
    REQUIRE(detail::idle_pooled_states() == 1);
  };
  struct Change {
    const char* source;
    bool gives_back;
  };
  const Change changes[] = {
      {"local z = 0; math.zero = -z", false},
      {"math.zero = 0/-1", false},
      {"math.zero = 0", true},
      {"math.zero = 1; math.zero = 0", true},
      {"local z = 0; math.zero = -z; math.zero = z", true},
  };
  for (const Change& change : changes) {
    CAPTURE(change.source);
    prepare();
    const Value r = ok_results(run(std::string(change.source) + "; return 1 / math.zero", "alice"));
    CHECK(r.get(1).as_number() == (change.gives_back ? HUGE_VAL : -HUGE_VAL));
    CHECK(detail::idle_pooled_states() == (change.gives_back ? 1u : 0u));
    // The next run sees 0 where the state came back, and a fresh state's math otherwise.
    const Value next = ok_results(run("return math.zero == nil or 1 / math.zero", "alice"));
    if (change.gives_back) {
      CHECK(next.get(1).as_number() == HUGE_VAL);
    } else {
      CHECK(next.get(1).as_bool());
    }
  }
}

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
    lua_rawgeti(state->L, LUA_REGISTRYINDEX, state->pool_ref);
    lua_rawgeti(state->L, -1, 5);  // kPoolKeptGlobals
    REQUIRE(lua_istable(state->L, -1));
    lua_pushboolean(state->L, 1);
    lua_setfield(state->L, -2, "tampered");
    lua_pop(state->L, 2);
    detail::return_pooled_state(std::move(state), false, false);
  }
  CHECK(ok_results(run("local t = tampered; return t == true", "alice")).get(1).as_bool());
  CHECK(ok_results(run("other = 1; return 1", "alice")).get(1).as_integer() == 1);  // ran on it, wrote: not kept
  CHECK(ok_results(run("local t = tampered; return t == nil", "alice")).get(1).as_bool());
}
