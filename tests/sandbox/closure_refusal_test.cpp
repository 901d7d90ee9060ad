// What never travels, and hostile input: C functions, bytecode, texts that are not one
// function expression, forged upvalue lists, cdata literals, mutated texts, the byte cap,
// and the scanner that cuts function texts out of their chunks.
#include "tests/sandbox/closure_support.hpp"
#include "tests/support/error_checks.hpp"

using namespace closure_test;

TEST_CASE_TEMPLATE("a C function is refused with the path of the field, through upvalues too", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("return {state = {cb = string.gmatch('a', 'a')}}"), Errc::not_transferable,
              "value at result[1].state.cb cannot travel: a C function");
  check_error(run<Level>("local helper = {it = string.gmatch('a', 'a')}\nreturn {cb = function() return helper end}"),
              Errc::not_transferable, "value at result[1].cb (upvalue 'helper').it cannot travel: a C function");
  check_error(run<Level>("local co = coroutine.create(print)\nreturn function() return co end"), Errc::not_transferable,
              "value at result[1] (upvalue 'co') cannot travel: coroutines cannot travel");
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  luaL_openlibs(L);
  lua_getglobal(L, "print");  // no restricted environment registered here: print is any C function
  lua_createtable(L, 0, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, "cb");
  check_error(sojourn::sandbox::lua::to_value(L, -1, {"state", 0}), Errc::not_transferable,
              "value at state.cb cannot travel: a C function");
  lua_close(L);
}

TEST_CASE_TEMPLATE("bytecode and texts that are not one function expression are never loaded", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("return 1", Value::array({Value::function(std::string("\x1bLJ\x02\x00junk", 9))})),
              Errc::sandbox_refused, "refused by the sandbox: function from value:1 is bytecode, which is never loaded");
  for (const char* text : {"function() end; x = 1", "(function() return 1 end)()", "function() end end", "return 1",
                           "function() end or node.call('x')", "function() return 1 end\n(x)", ""}) {
    CAPTURE(text);
    check_error(run<Level>("return 1", Value::array({Value::function(text, "=agent", 4)})), Errc::sandbox_refused,
                "refused by the sandbox: the text of function from agent:4 is not one function expression");
  }
  check_error(run<Level>("return 1", Value::array({Value::function("function() return + end", "=agent", 2)})),
              Errc::sandbox_refused,
              "refused by the sandbox: function from agent:2 does not compile: agent:2: unexpected symbol near '+'");
  Value injected = Value::function("function() return x end");
  injected.add_upvalue("x = node.call('x') --", 1);
  check_error(run<Level>("return 1", Value::array({injected})), Errc::sandbox_refused,
              "refused by the sandbox: function from value:1 has an upvalue name that is not a Lua name: "
              "'x = node.call('x') --'");
  check_error(run<Level>("return 1", Value::array({Value::library_function("os.execute")})), Errc::sandbox_refused,
              "refused by the sandbox: library function 'os.execute' is not available here");
}

TEST_CASE_TEMPLATE("a huge number of closures ends with memory_limit, not a crash", Level, SOJOURN_SUITE_LEVELS) {
  check_error(run<Level>("local t = {} for i = 1, 200000 do local k = i t[i] = function() return k end end return t"),
              Errc::memory_limit, "memory limit of 16777216 bytes exceeded");
}

TEST_CASE_TEMPLATE("the scanner finds a function's text past strings, long strings, comments and nested blocks", Level, SOJOURN_SUITE_LEVELS) {
  const std::string chunk =
      "local s = 'function end' -- function\n"
      "local function f(a) --[[ end ]] local t = {[ [=[end]=] ] = \"\\\"end\"}\n"
      "  repeat a = a - 1 until a < 0 if a then do end end\n"
      "  return [==[\n]]end]==], function() end\n"
      "end\n";
  // The long string on line 4 holds a newline: f ends on line 6, the inner function is on 5.
  auto found = scan::find_functions(chunk, 1, 2, 6);
  REQUIRE(found.size() == 1);
  CHECK(found[0].text == "function(a)" + chunk.substr(chunk.find("(a)") + 3, chunk.size() - chunk.find("(a)") - 4));
  REQUIRE(scan::find_functions(chunk, 1, 5, 5).size() == 1);
  CHECK(scan::find_functions(chunk, 1, 5, 5)[0].text == "function() end");
  CHECK(scan::find_functions(chunk, 1, 2, 5).empty());
  // And LuaJIT agrees: both travel and run.
  Value sent = run_and_send<Level>(chunk + "return f, f(1)");
  CHECK(sent.get(1).function_source() == found[0].text);
  CHECK(sent.get(3).function_source() == "function() end");
  CHECK(sent.get(2).as_string() == "]]end");  // a newline right after [==[ is skipped
  // Windows line ends count once, and a chunk registered from line 7 numbers from there.
  auto crlf = scan::find_functions("x = 1\r\nlocal g = function(b)\r\n return b\r\nend", 7, 8, 10);
  REQUIRE(crlf.size() == 1);
  CHECK(crlf[0].text == "function(b)\r\n return b\r\nend");
  auto method = scan::find_functions("function a.b --[[x]] :\nc() end", 1, 1, 2);
  REQUIRE(method.size() == 1);
  CHECK(method[0].text == "function\n(self) end");
}

TEST_CASE("only one function expression and nothing after it passes the loading check") {
  CHECK(scan::is_one_function_expression("function(a, ...) if a then return 'end' end repeat until true end"));
  CHECK(scan::is_one_function_expression("function() return [[end]] end -- trailing comment"));
  CHECK_FALSE(scan::is_one_function_expression("function() end, 1"));
  CHECK_FALSE(scan::is_one_function_expression("function f() end"));
  CHECK_FALSE(scan::is_one_function_expression("function() repeat end until x end"));
  CHECK_FALSE(scan::is_one_function_expression("function() return 'unfinished end"));
  CHECK_FALSE(scan::is_one_function_expression("function() --[[ end"));
}

TEST_CASE("a function whose chunk was never registered cannot travel, and says which chunk") {
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  const std::string code = "return function() return 1 end";
  REQUIRE(luaL_loadbuffer(L, code.data(), code.size(), "=other") == 0);
  REQUIRE(lua_pcall(L, 0, 1, 0) == 0);
  check_error(scan::to_value(L, -1, {"state", 0}), Errc::not_transferable,
              "value at state cannot travel: a function whose source text is unknown (chunk other)");
  scan::register_chunk(L, "=other", "-- another text\nreturn 2");
  check_error(scan::to_value(L, -1, {"state", 0}), Errc::not_transferable,
              "value at state cannot travel: a function whose text was not found at lines 1-1 of other");
  scan::register_chunk(L, "=other", code);
  auto v = scan::to_value(L, -1, {"state", 0});
  REQUIRE(v.ok());
  CHECK(v->function_source() == "function() return 1 end");
  lua_close(L);
}

TEST_CASE("the byte cap counts function text and upvalues") {
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  const std::string code = "local big = string.rep('x', 10000) return function() return big end";
  luaL_openlibs(L);
  REQUIRE(luaL_dostring(L, code.c_str()) == 0);
  check_error(scan::to_value(L, -1, {"state", 8000}), Errc::memory_limit, "memory limit of 8000 bytes exceeded");
  CHECK(scan::to_value(L, -1, {"state", 20000}).ok());
  lua_close(L);
}

TEST_CASE_TEMPLATE("an agent step whose state holds a forged function is refused before the entry runs", Level, SOJOURN_SUITE_LEVELS) {
  Value state = Value::table();
  state.set("cb", Value::function("(function() return 1 end)()", "=agent", 3));
  RunInput input;
  input.source = "return { start = function(s) s.ran = true end }";
  input.chunk_name = "agent";
  input.limits = Limits{10'000'000, kMemory, 5000};
  auto r = Level::run_agent(input, sojourn::sandbox::AgentInput{"start", state, Value::table()}, nullptr);
  REQUIRE_FALSE(r.ok());
  CHECK_ERROR(r, Errc::sandbox_refused, "agent:3", "not one function expression");
}

TEST_CASE_TEMPLATE("forged upvalue lists and library functions are refused, an odd line is not", Level, SOJOURN_SUITE_LEVELS) {
  Value twice = Value::function("function() return x end");
  twice.add_upvalue("x", 1);
  twice.add_upvalue("x", 2);
  check_error(run<Level>("return 1", Value::array({twice})), Errc::sandbox_refused,
              "refused by the sandbox: function from value:1 has two upvalues named 'x'");
  Value many = Value::function("function() end");
  for (int i = 0; i < 61; ++i) many.add_upvalue(std::string("u").append(std::to_string(i)), i);
  check_error(run<Level>("return 1", Value::array({many})), Errc::sandbox_refused,
              "refused by the sandbox: function from value:1 has more than 60 upvalues");
  Value lib = Value::library_function("print");
  lib.add_upvalue("x", 1);
  check_error(run<Level>("return 1", Value::array({lib})), Errc::sandbox_refused,
              "refused by the sandbox: library function 'print' comes with a text or upvalues");
  // A line far down is not padded (messages then count from the function's first line). A
  // position in another chunk than the run's own comes after "Lua error: ".
  Value far = Value::function("function(a)\n  error('far ' .. a)\nend", "=agent", 4'000'000'000u);
  check_error(run<Level>("local f = ... f('x')", Value::array({far})), Errc::lua_error, "Lua error: agent:2: far x");
  Value near = Value::function("function(a)\n  error('near ' .. a)\nend", "=agent", 40);
  check_error(run<Level>("local f = ... f('x')", Value::array({near})), Errc::lua_error, "Lua error: agent:41: near x");
}

TEST_CASE_TEMPLATE("an upvalue the text does not use is ignored, and one it uses but the Value lacks is nil", Level, SOJOURN_SUITE_LEVELS) {
  Value f = Value::function("function() return a, b end");
  f.add_upvalue("a", 1);
  f.add_upvalue("unused", 2);
  auto r = run<Level>("b = 'global b' return (...)()", Value::array({f}));
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 1);
  CHECK(r->get(2).as_string() == "global b");  // a free name that is no upvalue is a global
}

TEST_CASE("twenty thousand mutated function texts are rebuilt or refused, never run or crash") {
  const std::string texts[] = {
      "function(a, b) local t = {a, b, 'end', [[long end]]} for i = 1, #t do if t[i] then return t[i] end end end",
      "function(self, ...) repeat self.n = (self.n or 0) + select('#', ...) until true return self end",
      "function(x) --[==[ comment ]==] return function() return x end end",
  };
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  std::uint64_t seed = 12345;
  auto next = [&] { return seed = seed * 6364136223846793005ULL + 1442695040888963407ULL, seed >> 33; };
  const char alphabet[] = "()[]=-'\"\\\n endfunctiondorepeatuntilif,;x.:#";
  int rebuilt = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string text = texts[static_cast<std::size_t>(i) % 3];
    for (int m = 0, count = 1 + static_cast<int>(next() % 3); m < count; ++m) {
      const std::size_t at = next() % (text.size() + 1);
      switch (next() % 3) {
        case 0: text.insert(at, 1, alphabet[next() % (sizeof alphabet - 1)]); break;
        case 1: if (at < text.size()) text.erase(at, 1); break;
        default: if (at < text.size()) text[at] = alphabet[next() % (sizeof alphabet - 1)]; break;
      }
    }
    auto pushed = scan::push_value_protected(L, Value::function(text, "=fuzz", 1), 0);
    if (pushed.ok()) {
      CHECK(lua_isfunction(L, -1));
      lua_pop(L, *pushed);
      ++rebuilt;
    } else {
      CHECK(pushed.error().code == Errc::sandbox_refused);
      ++refused;
    }
    CHECK(lua_gettop(L) == 0);
  }
  CHECK(rebuilt > 1000);
  CHECK(refused > 1000);
  lua_close(L);
}

TEST_CASE_TEMPLATE("functions with cdata number literals neither leave a run nor enter one", Level, SOJOURN_SUITE_LEVELS) {
  // LuaJIT loads its FFI on demand for 1LL and 0i; loading thousands of such texts into
  // one state was seen to crash lua_close.
  CHECK(scan::has_cdata_literal("function() return 1LL end"));
  CHECK(scan::has_cdata_literal("function() return 2ull end"));
  CHECK(scan::has_cdata_literal("function() return 0x2i end"));
  CHECK_FALSE(scan::has_cdata_literal("function() return 0x10, 1e5, 'LL', 3i_ end"));
  // A chunk with one never even loads (run_lua refuses it first).
  check_error(run<Level>("return function() return 1LL end"), Errc::sandbox_refused,
              "refused by the sandbox: cdata number literals (1LL, 1ULL, 1i) are not accepted");
  check_error(run<Level>("return 1", Value::array({Value::function("function() return 0i end")})), Errc::sandbox_refused,
              "refused by the sandbox: function from value:1 has a cdata number literal (1LL, 0i), which is not loaded");
}

TEST_CASE("a main chunk cannot travel") {
  lua_State* L = luaL_newstate();
  REQUIRE(L != nullptr);
  REQUIRE(luaL_loadstring(L, "return 1") == 0);
  check_error(scan::to_value(L, -1, {"state", 0}), Errc::not_transferable, "value at state cannot travel: a main chunk");
  lua_close(L);
}
