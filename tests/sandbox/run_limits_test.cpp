// Everything a trusted run does counts against its limits: rebuilding the closures of its
// arguments and agent state, converting its results, and the work of C helpers (patterns,
// plain find, table shifts) that the count hook never sees. Also the loading check of a
// function text, which must read the text as the loader does.
#include <atomic>
#include <chrono>
#include <thread>

#include "tests/sandbox/closure_support.hpp"

using namespace closure_test;

namespace {

Result<Value> run_with(std::string_view source, Limits limits, Value args = {}, const std::atomic<bool>* abort = nullptr) {
  RunInput input;
  input.source = source;
  input.args = std::move(args);
  input.limits = limits;
  input.abort = abort;
  return run_lua(input, nullptr);
}

// `count` different functions, as a peer sends them: each is compiled when it is rebuilt.
Value many_functions(int count) {
  Value list = Value::table();
  for (int i = 0; i < count; ++i) {
    list.set(i + 1, Value::function("function() return " + std::to_string(i) + " end", "=agent", 1));
  }
  return Value::array({list});
}

}  // namespace

TEST_CASE("a function text is checked as it is loaded, after `return`, where '#' is an operator") {
  const std::string hidden = "#{}, (function() x = 1 end)(),\nfunction() end";
  CHECK_FALSE(scan::is_one_function_expression(hidden));
  CHECK_FALSE(scan::is_one_function_expression("\xef\xbb\xbf" "function() end"));
  CHECK_FALSE(scan::is_one_function_expression("#!\nfunction() end"));
  CHECK(scan::is_one_function_expression("function() return #{} end"));
  // The chunk the loader loads is the one checked, upvalue declarations included.
  const std::string chunk = scan::function_chunk("function() return a + b end", {"a", "b"}, 2);
  CHECK(chunk == "\n\nlocal a, b; a, b = nil; return function() return a + b end");
  CHECK(scan::is_one_function_chunk(chunk));
  CHECK_FALSE(scan::is_one_function_chunk(scan::function_chunk(hidden, {"a"}, 0)));
  CHECK_FALSE(scan::is_one_function_chunk("local a; a = f(); return function() end"));
  CHECK_FALSE(scan::is_one_function_chunk("return function() end, g()"));
  // A run given such a text refuses it: nothing of it runs, not even under a tiny budget.
  check_error(run_with("return ...", Limits{1000, kMemory, 5000}, Value::array({Value::function(hidden, "=agent", 1)})),
              Errc::sandbox_refused, "refused by the sandbox: the text of function from agent:1 is not one function expression");
}

TEST_CASE("rebuilding the closures of the arguments runs under the run's instruction budget") {
  // Each rebuilt closure runs its chunk (a few instructions): two thousand pass 1,000.
  check_error(run_with("return 1", Limits{1000, kMemory, 5000}, many_functions(2000)), Errc::cpu_limit,
              "CPU limit of 1000 instructions exceeded");
  auto r = run_with("return #(...)", Limits{100000, kMemory, 5000}, many_functions(2000));
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 2000);
}

TEST_CASE("rebuilding the closures of the arguments stops at the deadline and at the abort flag") {
  // The arguments are built before the clock starts: under ASan on a loaded machine building
  // 20,000 closures' values alone took most of the second this check allows the run.
  auto args = many_functions(20000);
  const auto start = std::chrono::steady_clock::now();
  check_error(run_with("return 1", Limits{1'000'000'000'000, 256u << 20, 20}, std::move(args)), Errc::deadline,
              "wall-clock deadline of 20 ms exceeded");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(1000));

  std::atomic<bool> abort{false};
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    abort = true;
  });
  auto r = run_with("return 1", Limits{1'000'000'000'000, 256u << 20, 60000}, many_functions(40000), &abort);
  stopper.join();
  check_error(r, Errc::shutting_down, "node is shutting down");
}

TEST_CASE("an agent's state is rebuilt under the step's budget") {
  RunInput input;
  input.source = "return { start = function(s) return 1 end }";
  input.chunk_name = "agent";
  input.limits = Limits{1000, kMemory, 5000};
  const Value state = many_functions(2000).get(1);
  auto r = sojourn::sandbox::run_agent(input, sojourn::sandbox::AgentInput{"start", state, Value::table()}, nullptr);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::cpu_limit);
}

TEST_CASE("converting two thousand closures cut from one line is linear") {
  std::string source = "return {";
  for (int i = 0; i < 2000; ++i) source += (i ? ", " : "") + ("function() return " + std::to_string(i) + " end");
  source += "}";
  const auto start = std::chrono::steady_clock::now();
  // A compilation per candidate and closure was 2,000 x 2,000 of them (11 s); now 2,000.
  auto r = run_with(source, Limits{200000, kMemory, 5000});
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->get(1).get(1234).function_source() == "function() return 1233 end");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
}

TEST_CASE("a quantifier-free pattern and a plain find cost their work") {
  const auto start = std::chrono::steady_clock::now();
  check_error(run_with("return string.match(string.rep('a', 120000), string.rep('a', 60000) .. 'b')",
                       Limits{10'000'000, kMemory, 100}),
              Errc::sandbox_refused, "refused by the sandbox: pattern too complex for a subject of 120000 bytes");
  check_error(run_with("return string.find(string.rep('a', 1e6), string.rep('a', 5e4) .. 'b', 1, true)",
                       Limits{10'000'000, kMemory, 5000}),
              Errc::cpu_limit, "CPU limit of 10000000 instructions exceeded");
  // The same without plain: no special character, so the same byte search.
  check_error(run_with("return string.find(string.rep('a', 1e6), string.rep('a', 5e4) .. 'b')",
                       Limits{10'000'000, kMemory, 5000}),
              Errc::cpu_limit, "CPU limit of 10000000 instructions exceeded");
  // Under a huge budget, the wall-clock deadline refuses what it cannot finish.
  check_error(run_with("return string.find(string.rep('a', 1e6), string.rep('a', 5e4) .. 'b', 1, true)",
                       Limits{1'000'000'000'000, kMemory, 50}),
              Errc::deadline, "wall-clock deadline of 50 ms exceeded");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  // A kill charged by a C helper is sticky: pcall does not keep the run alive.
  check_error(run_with("pcall(string.find, string.rep('a', 1e6), string.rep('a', 5e4) .. 'b', 1, true) return 1",
                       Limits{10'000'000, kMemory, 5000}),
              Errc::cpu_limit, "CPU limit of 10000000 instructions exceeded");
}

TEST_CASE("shifting a table in C counts against the budget") {
  check_error(run_with("local t = {} for i = 1, 100000 do t[i] = i end "
                       "for i = 1, 10000 do table.insert(t, 1, i) end return #t",
                       Limits{10'000'000, kMemory, 5000}),
              Errc::cpu_limit, "CPU limit of 10000000 instructions exceeded");
  auto r = run_with("local t = {} for i = 1, 1000 do table.insert(t, 1, i) end "
                    "table.sort(t) return t[1], table.concat(t, ','):sub(1, 5), select('#', unpack(t))",
                    Limits{10'000'000, kMemory, 5000});
  REQUIRE(r.ok());
  CHECK(r->get(1).as_integer() == 1);
  CHECK(r->get(2).as_string() == "1,2,3");
  CHECK(r->get(3).as_integer() == 1000);
}
