// Tests of running Lua at every level the machine has (tests/support/jail_levels.hpp): results
// and arguments, node.call, every limit and the known ways around them, the restricted
// environment, and error messages (exact, the same at every level).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/sandbox/lua_sandbox.hpp"
#include "tests/support/jail_levels.hpp"
#include "tests/support/time_scale.hpp"

// The internal conversion API, reused by agent state migration, is tested directly too.
#include <luajit-2.1/lua.hpp>

#include "sandbox/lua/lua_value.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::RunInput;

constexpr std::uint64_t kMemory = 16u << 20;

// Without a wall-clock limit of its own, a run gets 5 s scaled by the host's slowness (an
// emulated microVM, a loaded host: tests/support/time_scale.hpp); a deadline test passes its own.
Limits limits(std::uint64_t cpu = 10'000'000, std::uint64_t memory = kMemory, std::uint32_t wall_ms = 0) {
  return Limits{cpu, memory, wall_ms != 0 ? wall_ms : test_support::scaled_ms(5000)};
}

// One chunk at the level under test.
template <class Level>
Result<Value> run(std::string_view source, Limits l = limits(), Value args = {}, HostCalls* host = nullptr) {
  RunInput input;
  input.source = source;
  input.args = std::move(args);
  input.limits = l;
  return Level::run(input, host);
}

void check_error(const Result<Value>& r, Errc code, const std::string& message) {
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == code);
  CHECK(r.error().message == message);
}

class FakeHost : public HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    calls.emplace_back(service);
    last_args = args;
    if (service == "echo") return args;
    if (service == "point") {
      Value t = Value::table();
      t.set("x", 3);
      t.set("y", 4.5);
      return t;
    }
    return sojourn::make_error(Errc::no_such_service, "no such service: " + std::string(service));
  }
  std::vector<std::string> calls;
  Value last_args;
};

}  // namespace

TEST_CASE_TEMPLATE("a chunk's return values come back in order with their types", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("return 1, 2.5, 'x', true, nil, {a = 1}, 2^53, -0.0, 0/0");
  REQUIRE(r.ok());
  const Value& v = *r;
  CHECK(v.get(1).is_integer());
  CHECK(v.get(1).as_integer() == 1);
  CHECK(v.get(2).type() == Value::Type::number);
  CHECK(v.get(2).as_number() == 2.5);
  CHECK(v.get(3).as_string() == "x");
  CHECK(v.get(4).as_bool() == true);
  CHECK(v.get(5).is_nil());
  CHECK(v.get(6).get("a").as_integer() == 1);
  CHECK(v.get(7).type() == Value::Type::number);  // 2^53 is past the exact-integer range
  CHECK(v.get(8).type() == Value::Type::number);
  CHECK(std::signbit(v.get(8).as_number()));
  CHECK(std::isnan(v.get(9).as_number()));
  CHECK(v.length() == 4);  // the nil is a hole, the rest are keyed past it
  CHECK(v.size() == 8);
}

TEST_CASE_TEMPLATE("a chunk that returns nothing gives an empty array", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("local x = 1");
  REQUIRE(r.ok());
  CHECK(r->is_table());
  CHECK(r->size() == 0);
}

TEST_CASE_TEMPLATE("the args reach the chunk as ...", Level, SOJOURN_SUITE_LEVELS) {
  Value args = Value::array({1, "two", 3.5});
  auto r = run<Level>("local a, b, c = ... return select('#', ...), a + 1, b .. '!', c", limits(), args);
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 3);
  CHECK(r->get(2).as_integer() == 2);
  CHECK(r->get(3).as_string() == "two!");
  CHECK(r->get(4).as_number() == 3.5);
}

TEST_CASE_TEMPLATE("a table with a cycle and shared subtables round-trips through Lua", Level, SOJOURN_SUITE_LEVELS) {
  Value root = Value::table();
  Value shared = root.new_table();
  shared.set("v", 7);
  root.set("a", shared);
  root.set("b", shared);
  root.set("self", root);
  root.set(1, "first");
  Value odd = root.new_table();  // in root's graph: Value::array would copy shared and root
  odd.push(shared);
  odd.push(root);
  root.set("odd key", odd);
  auto r = run<Level>("local t = ... assert(t.a == t.b) assert(t.self == t) assert(t['odd key'][2] == t) return t",
               limits(), Value::array({root}));
  REQUIRE(r.ok());
  Value back = r->get(1);
  CHECK(sojourn::deep_equal(back, root));
  CHECK(back.get("a").same_table(back.get("b")));
  CHECK(back.get("self").same_table(back));
  CHECK(back.get("odd key").get(1).same_table(back.get("a")));
}

TEST_CASE_TEMPLATE("tables made in Lua keep their sharing and cycles", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("local s = {1, 2} local t = {s, s, x = {}} t.x.up = t return t, s");
  REQUIRE(r.ok());
  Value t = r->get(1);
  CHECK(t.get(1).same_table(t.get(2)));
  CHECK(t.get(1).same_table(r->get(2)));
  CHECK(t.get("x").get("up").same_table(t));
}

TEST_CASE_TEMPLATE("node.call reaches the host and a service error becomes a Lua error", Level, SOJOURN_SUITE_LEVELS) {
  FakeHost host;
  auto r = run<Level>("local p = node.call('point') local e = node.call('echo', 1, 'a', {k = true}) "
               "return p.x + p.y, e[2], e[3].k",
               limits(), {}, &host);
  REQUIRE(r.ok());
  CHECK(r->get(1).as_number() == 7.5);
  CHECK(r->get(2).as_string() == "a");
  CHECK(r->get(3).as_bool());
  REQUIRE(host.calls.size() == 2);
  CHECK(host.calls[1] == "echo");
  CHECK(host.last_args.length() == 3);

  auto failed = run<Level>("local x = 1\nlocal y = node.call('missing', 1)", limits(), {}, &host);
  check_error(failed, Errc::lua_error, "Lua error at eval:2: no such service: missing");
  auto caught = run<Level>("return pcall(node.call, 'missing')", limits(), {}, &host);
  REQUIRE(caught.ok());
  CHECK(caught->get(1).as_bool() == false);
  CHECK(caught->get(2).as_string() == "no such service: missing");
}

TEST_CASE_TEMPLATE("node.call without a host and with a function argument fails cleanly", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("local r = node.call('x')"), Errc::lua_error, "Lua error at eval:1: node.call is not available here");
  // A tail call leaves no Lua caller to name.
  check_error(run<Level>("return node.call('x')"), Errc::lua_error, "Lua error: node.call is not available here");
  FakeHost host;
  check_error(run<Level>("local r = node.call('echo', 1, {cb = string.gmatch('a', 'a')})", limits(), {}, &host), Errc::lua_error,
              "Lua error at eval:1: value at args[2].cb cannot travel: a C function");
  CHECK(host.calls.empty());
}

TEST_CASE_TEMPLATE("an infinite loop ends with cpu_limit", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("while true do end", limits(100000)), Errc::cpu_limit, "CPU limit of 100000 instructions exceeded");
}

TEST_CASE_TEMPLATE("pcall cannot swallow the CPU limit", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("while true do pcall(function() while true do end end) end", limits(100000)), Errc::cpu_limit,
              "CPU limit of 100000 instructions exceeded");
  check_error(run<Level>("local ok = pcall(function() while true do end end) return ok", limits(100000)), Errc::cpu_limit,
              "CPU limit of 100000 instructions exceeded");
}

TEST_CASE_TEMPLATE("xpcall cannot swallow the CPU limit, even with a looping handler", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("return xpcall(function() error('x') end, function() while true do end end)", limits(100000)),
              Errc::cpu_limit, "CPU limit of 100000 instructions exceeded");
  check_error(run<Level>("while true do xpcall(function() while true do end end, function(e) return e end) end",
                  limits(100000)),
              Errc::cpu_limit, "CPU limit of 100000 instructions exceeded");
}

TEST_CASE_TEMPLATE("xpcall still calls its handler for an ordinary error", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("return xpcall(function(a) error('bad ' .. a, 0) end, function(e) return 'handled: ' .. e end, 'x')");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_bool() == false);
  CHECK(r->get(2).as_string() == "handled: bad x");
}

TEST_CASE_TEMPLATE("coroutines cannot swallow the CPU limit", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
                  limits(100000)),
              Errc::cpu_limit, "CPU limit of 100000 instructions exceeded");
  check_error(run<Level>("pcall(coroutine.wrap(function() while true do end end)) return 1", limits(100000)),
              Errc::cpu_limit, "CPU limit of 100000 instructions exceeded");
}

TEST_CASE_TEMPLATE("the count hook sees every iteration because the JIT is off", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("local s = 0 for i = 1, 1e7 do s = s + i end return s", limits(1'000'000)), Errc::cpu_limit,
              "CPU limit of 1000000 instructions exceeded");
}

TEST_CASE_TEMPLATE("allow_jit turns the JIT on, and compiled loops run past the count hook", Level, SOJOURN_SUITE_LEVELS) {
  // Why code from peers never gets the JIT: the same loop as above finishes under the
  // same budget because the hook never sees the compiled iterations.
  RunInput input;
  input.source = "local s = 0 for i = 1, 1e7 do s = s + i end return s";
  input.limits = limits(1'000'000);
  input.allow_jit = true;
  auto r = Level::run(input, nullptr);
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 50000005000000);
}

TEST_CASE_TEMPLATE("code in a coroutine can still yield across pcall", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("local co = coroutine.wrap(function() local ok, v = pcall(coroutine.yield, 1) return ok, v end) "
               "local first = co() local ok, v = co('back') return first, ok, v");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 1);
  CHECK(r->get(2).as_bool() == true);
  CHECK(r->get(3).as_string() == "back");
}

TEST_CASE_TEMPLATE("a script cannot fake a CPU limit with its own error", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("error('CPU limit of 5 instructions exceeded')", limits(5000)), Errc::lua_error,
              "Lua error at eval:1: CPU limit of 5 instructions exceeded");
  check_error(run<Level>("error('CPU limit of 5 instructions exceeded', 0)", limits(5000)), Errc::lua_error,
              "Lua error: CPU limit of 5 instructions exceeded");
}

TEST_CASE_TEMPLATE("growing a table or a string past the memory limit ends with memory_limit", Level, SOJOURN_SUITE_LEVELS) {
  const std::uint64_t memory = 8u << 20;
  check_error(run<Level>("local t = {} for i = 1, 1e8 do t[i] = i end", limits(1'000'000'000, memory)), Errc::memory_limit,
              "memory limit of 8388608 bytes exceeded");
  check_error(run<Level>("local s = 'x' while true do s = s .. s end", limits(1'000'000'000, memory)), Errc::memory_limit,
              "memory limit of 8388608 bytes exceeded");
  check_error(run<Level>("local t = {} for i = 1, 1e8 do t[i] = 'item' .. i end", limits(1'000'000'000, memory)),
              Errc::memory_limit, "memory limit of 8388608 bytes exceeded");
}

TEST_CASE_TEMPLATE("a memory error caught by pcall lets the run go on", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("local ok, e = pcall(function() local t = {} for i = 1, 1e8 do t[i] = i end end) return ok, e",
               limits(1'000'000'000, 8u << 20));
  REQUIRE(r.ok());
  CHECK(r->get(1).as_bool() == false);
  CHECK(r->get(2).as_string() == "not enough memory");
}

TEST_CASE_TEMPLATE("results that would outgrow the memory limit on the C++ side are refused", Level, SOJOURN_SUITE_LEVELS) {
  // 200000 numbers take 2 MB in Lua but 8 MB as Value slots.
  check_error(run<Level>("local t = {} for i = 1, 200000 do t[i] = i end return t", limits(10'000'000, 4u << 20)),
              Errc::memory_limit, "memory limit of 4194304 bytes exceeded");
}

TEST_CASE_TEMPLATE("a very deep chain of tables converts both ways without recursion", Level, SOJOURN_SUITE_LEVELS) {
  // Roomy in time too: 64 MB of fresh guest pages take over 5 s in a microVM under the nested
  // VM's emulated CPU (TCG); the test is about recursion, not speed.
  const Limits roomy = limits(10'000'000, 64u << 20, 60'000);
  auto r = run<Level>("local t = {} for i = 1, 100000 do t = {next = t} end return t", roomy);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  Value chain = r->get(1);
  auto back = run<Level>("local t, n = ..., 0 while t.next do t, n = t.next, n + 1 end return n", roomy, Value::array({chain}));
  REQUIRE_MESSAGE(back.ok(), (back.ok() ? "" : back.error().message));
  CHECK(back->get(1).as_integer() == 100000);
}

TEST_CASE_TEMPLATE("node.call results keep their cycles", Level, SOJOURN_SUITE_LEVELS) {
  FakeHost host;
  auto r = run<Level>("local t = {} t.me = t local e = node.call('echo', t, t) return e[1].me == e[1], e[1] == e[2]",
               limits(), {}, &host);
  REQUIRE(r.ok());
  CHECK(r->get(1).as_bool());
  CHECK(r->get(2).as_bool());
  CHECK(host.last_args.get(1).same_table(host.last_args.get(2)));
}

TEST_CASE_TEMPLATE("a memory limit too small for the state itself is a memory_limit", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("return 1", limits(1000, 4096)), Errc::memory_limit, "memory limit of 4096 bytes exceeded");
}

TEST_CASE_TEMPLATE("deep recursion ends in a clean error", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("local function f() return 1 + f() end return f()"), Errc::lua_error,
              "Lua error: stack overflow");
}

TEST_CASE_TEMPLATE("recursion through C functions stops before the C stack overflows", Level, SOJOURN_SUITE_LEVELS) {
  const std::string expected = "Lua error at eval:1: stack overflow (too many nested C calls)";
  check_error(run<Level>("local function g() return (string.gsub('a', 'a', g)) end return g()"), Errc::lua_error, expected);
  check_error(run<Level>("local function g() coroutine.wrap(g)() end g()"), Errc::lua_error, expected);
  check_error(run<Level>("local function g() local ok, e = coroutine.resume(coroutine.create(g)) error(e, 0) end g()"),
              Errc::lua_error, expected);
  auto r = run<Level>("local function f(a, b) table.sort({3, 2, 1}, f) return a < b end "
               "local ok, e = pcall(table.sort, {2, 1}, f) return ok, e");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_bool() == false);
}

TEST_CASE_TEMPLATE("code loading functions and dangerous libraries are absent", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("return load, loadstring, dofile, loadfile, require, module, getfenv, setfenv, newproxy, gcinfo, "
               "os, io, debug, ffi, jit, package, string.dump, ('').dump, bit");
  REQUIRE(r.ok());
  CHECK(r->size() == 0);
}

TEST_CASE_TEMPLATE("the usual safe functions are present", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("return type(pairs), type(ipairs), type(table.concat), type(math.floor), type(coroutine.wrap), "
               "type(string.format), type(setmetatable), type(rawget), type(unpack), type(select)");
  REQUIRE(r.ok());
  for (int i = 1; i <= 10; ++i) CHECK(r->get(i).as_string() == "function");
}

TEST_CASE_TEMPLATE("bytecode is refused before it reaches LuaJIT", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>(std::string_view("\x1bLJ\x02\x00junk", 9)), Errc::sandbox_refused,
              "refused by the sandbox: bytecode is not accepted");
}

TEST_CASE_TEMPLATE("the string metatable exposes no dump and cannot be changed", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("local mt = getmetatable('') "
               "local has_dump = mt.__index.dump ~= nil "
               "mt.__index = {upper = function() return 'hacked' end} "
               "mt.__add = function() return 1 end "
               "return has_dump, ('abc'):upper(), pcall(function() return 'a' + {} end)");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_bool() == false);
  CHECK(r->get(2).as_string() == "ABC");
  CHECK(r->get(3).as_bool() == false);
}

TEST_CASE_TEMPLATE("a catastrophic pattern is refused instead of run", Level, SOJOURN_SUITE_LEVELS) {
  const std::string big = "refused by the sandbox: pattern too complex for a subject of 100000 bytes";
  const auto start = std::chrono::steady_clock::now();
  check_error(run<Level>("return string.rep('a', 100000):find('(a*)*b')"), Errc::sandbox_refused, big);
  check_error(run<Level>("return string.rep('a', 100000):match('a*a*b')"), Errc::sandbox_refused, big);
  check_error(run<Level>("local s = string.rep('\"', 40) return s:match(('\".-'):rep(20))"), Errc::sandbox_refused,
              "refused by the sandbox: pattern too complex for a subject of 40 bytes");
  check_error(run<Level>("for w in string.rep('a', 100000):gmatch('a-b') do end"), Errc::sandbox_refused, big);
  check_error(run<Level>("return (string.rep('a', 100000):gsub('%s*x', ''))"), Errc::sandbox_refused, big);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(test_support::scaled_ms(2000)));
}

TEST_CASE_TEMPLATE("ordinary patterns and plain find still work on large strings", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("local s = string.rep('a  b ', 200000) "
               "local squeezed = s:gsub('%s+', ' ') "
               "local n = 0 for w in s:gmatch('%a+') do n = n + 1 end "
               "return #squeezed, n, s:find('(a*)*b', 1, true), ('key=value'):match('^(.-)=(.*)$')");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 800000);
  CHECK(r->get(2).as_integer() == 400000);
  CHECK(r->get(3).is_nil());
  CHECK(r->get(4).as_string() == "key");
  CHECK(r->get(5).as_string() == "value");
}

TEST_CASE_TEMPLATE("a refused pattern caught by pcall lets the run go on", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("local ok, e = pcall(string.find, string.rep('a', 100000), 'a*a*b') return ok, e");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_bool() == false);
  CHECK(r->get(2).as_string() == "refused by the sandbox: pattern too complex for a subject of 100000 bytes");
}

TEST_CASE_TEMPLATE("string.rep with a huge count is a memory_limit, not an empty string", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("return #string.rep('x', 2^31)"), Errc::memory_limit, "memory limit of 16777216 bytes exceeded");
  check_error(run<Level>("return #string.rep('abc', 1e7, ',')"), Errc::memory_limit, "memory limit of 16777216 bytes exceeded");
  auto r = run<Level>("return #string.rep('ab', 1000, ',')");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 2999);
}

TEST_CASE_TEMPLATE("the wall-clock deadline stops a slow loop under a huge instruction budget", Level, SOJOURN_SUITE_LEVELS) {
  const auto start = std::chrono::steady_clock::now();
  check_error(run<Level>("while true do local s = string.rep('x', 64) end", limits(1'000'000'000'000, kMemory, 50)),
              Errc::deadline, "wall-clock deadline of 50 ms exceeded");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(test_support::scaled_ms(2000)));
}

TEST_CASE_TEMPLATE("the abort flag stops a run with shutting_down", Level, SOJOURN_SUITE_LEVELS) {
  std::atomic<bool> abort{true};
  RunInput input;
  input.source = "return 1";
  input.limits = limits();
  input.abort = &abort;
  check_error(Level::run(input, nullptr), Errc::shutting_down, "node is shutting down");

  abort = false;
  input.source = "while true do end";
  input.limits = limits(1'000'000'000'000, kMemory, 10000);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    abort = true;
  });
  auto r = Level::run(input, nullptr);
  stopper.join();
  check_error(r, Errc::shutting_down, "node is shutting down");
}

TEST_CASE_TEMPLATE("a returned C function is not transferable and the message names its path", Level, SOJOURN_SUITE_LEVELS) {
  // string.gmatch's iterator is a C function that is not part of the library by name.
  check_error(run<Level>("return 1, {cb = string.gmatch('a', 'a')}"), Errc::not_transferable,
              "value at result[2].cb cannot travel: a C function");
  check_error(run<Level>("local it = string.gmatch('a', 'a') return {{1, 2, it}}"), Errc::not_transferable,
              "value at result[1][1][3] cannot travel: a C function");
  check_error(run<Level>("return {['odd key'] = {coroutine.create(print)}}"), Errc::not_transferable,
              "value at result[1][\"odd key\"][1] cannot travel: coroutines cannot travel");
  check_error(run<Level>("local it = string.gmatch('a', 'a') return {['end'] = {[1.5] = {[true] = it}}}"),
              Errc::not_transferable, "value at result[1][\"end\"][1.5][true] cannot travel: a C function");
  check_error(run<Level>("return {[string.gmatch('a', 'a')] = 1}"), Errc::not_transferable,
              "value at result[1][<function>] cannot travel: a C function");
  check_error(run<Level>("return string.gmatch('a', 'a')"), Errc::not_transferable,
              "value at result[1] cannot travel: a C function");
}

TEST_CASE_TEMPLATE("Lua errors carry the chunk position, or none", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("local x = nil\nreturn x.y"), Errc::lua_error,
              "Lua error at eval:2: attempt to index local 'x' (a nil value)");
  check_error(run<Level>("error({})"), Errc::lua_error, "Lua error: (error object is a table value)");
  check_error(run<Level>("error(42)"), Errc::lua_error, "Lua error at eval:1: 42");  // error() positions numbers too
  check_error(run<Level>("error(42, 0)"), Errc::lua_error, "Lua error: 42");
  check_error(run<Level>("error()"), Errc::lua_error, "Lua error: (error object is a nil value)");
  check_error(run<Level>("return +"), Errc::lua_error, "Lua error at eval:1: unexpected symbol near '+'");
  // Guarded library functions check their arguments themselves, keeping the caller's line.
  check_error(run<Level>("local x = string.find()"), Errc::lua_error,
              "Lua error at eval:1: bad argument #1 to 'find' (string expected, got no value)");
  check_error(run<Level>("\ntable.sort(nil)"), Errc::lua_error,
              "Lua error at eval:2: bad argument #1 to 'sort' (table expected, got nil)");
  RunInput named;
  named.source = "error('boom')";
  named.chunk_name = "job.lua";
  named.limits = limits();
  check_error(Level::run(named, nullptr), Errc::lua_error, "Lua error at job.lua:1: boom");
}

TEST_CASE_TEMPLATE("collectgarbage only counts and print prints nothing", Level, SOJOURN_SUITE_LEVELS) {
  auto r = run<Level>("print('hello') return collectgarbage('count') > 0, pcall(collectgarbage)");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_bool());
  CHECK(r->get(2).as_bool() == false);
  CHECK(r->get(3).as_string() == "collectgarbage(\"collect\") is not available in the sandbox");
}

TEST_CASE_TEMPLATE("a run after a killed run starts afresh", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("leaked = 1 while true do end", limits(10000)), Errc::cpu_limit,
              "CPU limit of 10000 instructions exceeded");
  auto r = run<Level>("return leaked, 1 + 1");
  REQUIRE(r.ok());
  CHECK(r->get(1).is_nil());
  CHECK(r->get(2).as_integer() == 2);
}

TEST_CASE_TEMPLATE("zero limits are an invalid argument", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("return 1", Limits{}), Errc::invalid_argument,
              "invalid argument: every limit of a Lua run must be non-zero");
}

TEST_CASE_TEMPLATE("runs on several threads at once stay separate", Level, SOJOURN_SUITE_LEVELS) {
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        auto r = run<Level>("local n = ... x = n return x * 2", limits(), Value::array({t * 1000 + i}));
        if (r.ok() && r->get(1).as_integer() == 2 * (t * 1000 + i)) ++good;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(good == 200);
}

namespace lua = sojourn::sandbox::lua;

TEST_CASE("to_value converts the value at a stack index, leaves it there, and names its root in paths") {
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  REQUIRE(luaL_dostring(L, "local t = {1, 2, x = 'y'} t.self = t return t, {f = function() end}") == 0);
  auto first = lua::to_value(L, 1, {"state", 0});
  REQUIRE(first.ok());
  CHECK(lua_gettop(L) == 2);
  CHECK(first->get(2).as_integer() == 2);
  CHECK(first->get("self").same_table(*first));
  auto second = lua::to_value(L, 2, {"state", 0});
  REQUIRE(second.ok());  // a chunk loaded from a string is named by its text, so no registration is needed
  CHECK(second->get("f").function_source() == "function() end");
  lua_pushthread(L);
  check_error(lua::to_value(L, -1, {"state", 0}), Errc::not_transferable, "value at state cannot travel: coroutines cannot travel");
  lua_pop(L, 1);
  lua_pushnumber(L, 7);
  auto scalar = lua::to_value(L, -1, {"state", 0});
  REQUIRE(scalar.ok());
  CHECK(scalar->as_integer() == 7);
  lua_close(L);
}

TEST_CASE("pop_as_array gives a few scalars the converter's array, charges and errors") {
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  // Up to 16 values take the scalar path; 17 (the same values, then nils) the converter's.
  auto push_values = [L](int trailing_nils) {
    lua_pushinteger(L, 1);
    lua_pushnil(L);
    lua_pushliteral(L, "x");
    lua_pushboolean(L, 1);
    lua_pushnumber(L, 2.5);
    lua_pushnumber(L, -0.0);
    for (int i = 0; i < trailing_nils; ++i) lua_pushnil(L);
    return 6 + trailing_nils;
  };
  auto fast = lua::pop_as_array(L, push_values(0), {"result", 0});
  CHECK(lua_gettop(L) == 0);
  auto full = lua::pop_as_array(L, push_values(11), {"result", 0});
  CHECK(lua_gettop(L) == 0);
  REQUIRE(fast.ok());
  REQUIRE(full.ok());
  CHECK(sojourn::deep_equal(*fast, *full));
  CHECK(fast->get(1).as_integer() == 1);
  CHECK(fast->get(2).is_nil());
  CHECK(fast->get(3).as_string() == "x");
  CHECK(fast->get(4).as_bool());
  CHECK(fast->get(5).as_number() == 2.5);
  // A string past the cap fails the same way on both paths, and the values are popped.
  for (int trailing_nils : {0, 16}) {
    lua_pushliteral(L, "a string longer than the cap");
    for (int i = 0; i < trailing_nils; ++i) lua_pushnil(L);
    check_error(lua::pop_as_array(L, 1 + trailing_nils, {"result", 16}), Errc::memory_limit,
                "memory limit of 16 bytes exceeded");
    CHECK(lua_gettop(L) == 0);
  }
  lua_close(L);
}

TEST_CASE("push_value gives a table of scalars its array, its fields and nothing else") {
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  Value flat = Value::array({1, "two", true});
  flat.set("x", 1.5);
  flat.set(7, "seven");
  lua::push_value(L, flat);
  CHECK(lua_gettop(L) == 1);
  lua_rawgeti(L, 1, 2);
  CHECK(std::string(lua_tostring(L, -1)) == "two");
  lua_getfield(L, 1, "x");
  CHECK(lua_tonumber(L, -1) == 1.5);
  lua_rawgeti(L, 1, 7);
  CHECK(std::string(lua_tostring(L, -1)) == "seven");
  lua_settop(L, 1);
  auto back = lua::to_value(L, 1, {"v", 1 << 20});
  REQUIRE(back.ok());
  CHECK(sojourn::deep_equal(*back, flat));
  // Each push is a table of its own.
  lua::push_value(L, flat);
  CHECK(lua_rawequal(L, 1, 2) == 0);
  lua_close(L);
}

TEST_CASE("push_value builds fresh Lua tables that keep the Value's sharing") {
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  Value root = Value::table();
  Value inner = root.new_table();
  inner.set("n", 1.25);
  root.set("a", inner);
  root.set("b", inner);
  root.set("loop", root);
  lua::push_value(L, root);
  lua_getfield(L, -1, "a");
  lua_getfield(L, -2, "b");
  CHECK(lua_rawequal(L, -1, -2) == 1);
  lua_pop(L, 2);
  lua_getfield(L, -1, "loop");
  CHECK(lua_rawequal(L, -1, -2) == 1);
  lua_pop(L, 1);
  auto back = lua::to_value(L, -1, {"v", 1 << 20});
  REQUIRE(back.ok());
  CHECK(sojourn::deep_equal(*back, root));
  lua_close(L);
}

TEST_CASE_TEMPLATE("cdata number literals are refused before the chunk is loaded", Level, SOJOURN_SUITE_LEVELS) {
  for (const char* source : {"return 1LL", "local x = 0x10ULL + 1 return x", "return 2i"}) {
    check_error(run<Level>(source), Errc::sandbox_refused,
                "refused by the sandbox: cdata number literals (1LL, 1ULL, 1i) are not accepted");
  }
  // In strings and comments they are only text.
  auto r = run<Level>("-- 1LL\nreturn '2LL'");
  REQUIRE(r.ok());
  CHECK(r->get(1).as_string() == "2LL");
}
