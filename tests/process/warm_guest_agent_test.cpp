// Agent steps in warm guests: a weak step runs beside the guest's prepared state and the arena
// goes back to its snapshot after it (nothing of the step reaches the principal's next step or
// run); a strong step still starts on a pristine arena, so its image holds only its agent.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "tests/process/warm_guest_support.hpp"

using namespace warm_test;
using sojourn::sandbox::AgentInput;
using sojourn::sandbox::AgentOutcome;
using sojourn::sandbox::StrongOutcome;

namespace {

// What a run can see of its state: the heap's size, and what the polluting step changed.
constexpr const char* kLook =
    "return collectgarbage('count'), type(leaked), ('a'):upper(), type(table.insert), "
    "getmetatable('').__index.leaked == nil, type(pad)";

std::string look(const Value& v) {
  std::string out;
  for (std::int64_t i = 1; i <= 6; ++i) {
    const Value x = v.get(i);
    out += (x.is_string() ? x.as_string() : x.is_bool() ? (x.as_bool() ? "true" : "false") : std::to_string(x.as_number()));
    out += ' ';
  }
  return out;
}

std::string look_by_run(ProcessJail& jail) {
  Result<Value> r = run(jail, "signer a", kLook);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return look(*r);
}

RunInput step_input(std::string_view source) {
  RunInput input;
  input.source = source;
  input.chunk_name = "agent";
  input.limits = Limits{10'000'000, kMemory, 5000};
  input.principal = "signer a";
  return input;
}

Result<AgentOutcome> step(ProcessJail& jail, std::string_view source, std::int64_t n = 0) {
  Value state = Value::table();
  state.set("n", n);
  return jail.run_agent(step_input(source), AgentInput{"start", state, Value::table()}, nullptr);
}

constexpr const char* kPolluter = R"(
  function start(s)
    leaked = 'by the agent'
    string.upper = function() return 'pwned' end
    getmetatable('').__index.leaked = 'via the metatable'
    table.insert = nil
    pad = string.rep('x', 4 * 1024 * 1024)
    s.n = s.n + 1
    s.saw = ('a'):upper()
    agent.go('peer B', 'next')
  end)";

}  // namespace

TEST_CASE("a weak agent step in a warm guest leaves nothing for the principal's next step or run") {
  auto jail = start(1);
  const std::string before = look_by_run(*jail);
  CHECK(before.find("nil A function true nil") != std::string::npos);

  Result<AgentOutcome> went = step(*jail, kPolluter, 4);
  REQUIRE_MESSAGE(went.ok(), (went.ok() ? "" : went.error().message));
  CHECK(went->went);
  CHECK(went->go_peer == "peer B");
  CHECK(went->go_entry == "next");
  CHECK(went->state.get("n").as_integer() == 5);
  CHECK(went->state.get("saw").as_string() == "pwned");  // the changes were made, in that step

  // The principal's next step (another agent) and its next run see none of it.
  Result<AgentOutcome> next = step(*jail, std::string("function start(s) ") + kLook + " end");
  REQUIRE_MESSAGE(next.ok(), (next.ok() ? "" : next.error().message));
  CHECK_FALSE(next->went);
  CHECK(look(next->results).find("nil A function true nil") != std::string::npos);
  CHECK(look_by_run(*jail) == before);  // the prepared state byte for byte: even its memory count

  // A step that fails (a Lua error, a CPU kill) changes nothing either.
  CHECK_FALSE(step(*jail, "function start(s) leaked = 1 error('boom') end").ok());
  CHECK(look_by_run(*jail) == before);
  RunInput spin = step_input("function start(s) leaked = 1 while true do end end");
  spin.limits.cpu_instructions = 100'000;
  Result<AgentOutcome> killed = jail->run_agent(spin, AgentInput{"start", Value::table(), Value::table()}, nullptr);
  REQUIRE_FALSE(killed.ok());
  CHECK(killed.error().code == Errc::cpu_limit);
  CHECK(look_by_run(*jail) == before);
  // All eight in one guest: a limit the guest's own hook enforces ends the step with an
  // answer, and the restore makes the guest as fit as after any run.
  CHECK(jail->status().guests_reused == 7);
  CHECK(jail->status().guests_started == 1);
}

TEST_CASE("a strong step in a warm guest that served weak steps starts on a pristine arena") {
  constexpr const char* kStrong = "function start(s) local t = {} for i = 1, 1000 do t[i] = i end agent.go('peer B') end";
  const auto strong_step = [](ProcessJail& jail, bool allow_jit = false) {
    RunInput input = step_input(kStrong);
    input.chunk_name = "strong";
    input.allow_jit = allow_jit;
    Result<StrongOutcome> out = jail.run_strong(input, AgentInput{"start", Value::table(), Value::table()}, nullptr);
    REQUIRE_MESSAGE(out.ok(), (out.ok() ? "" : out.error().message));
    CHECK(out->step.strong_stop);
    return out->raw_bytes;
  };
  // In a guest that never had a prepared state (one whose key allows the JIT)...
  auto untouched = start(1);
  const std::uint64_t pristine = strong_step(*untouched, true);
  // ... and in one that served a run and weak steps (each back on its prepared state after):
  // the same span, give or take the JIT's library, not the prepared state's pages as well
  // (about 40 KB more when the strong step ran beside it).
  auto used = start(1);
  CHECK(look_by_run(*used).find("nil A") != std::string::npos);
  REQUIRE(step(*used, kPolluter, 1).ok());
  REQUIRE(step(*used, "function start(s) return 1 end").ok());
  const std::uint64_t after_steps = strong_step(*used);
  CHECK(used->status().guests_reused == 3);  // the strong step in the steps' own guest
  CAPTURE(pristine);
  CAPTURE(after_steps);
  CHECK(after_steps <= pristine + 8192);
  CHECK(pristine <= after_steps + 8192);
}

TEST_CASE("a warm guest reuses a step's compiled chunk only for the same text, and runs still see the environment alone") {
  auto jail = start(1);
  const std::string before = look_by_run(*jail);
  const auto mark = [&](const char* source) {
    Result<AgentOutcome> out = step(*jail, source);
    REQUIRE_MESSAGE(out.ok(), (out.ok() ? "" : out.error().message));
    CHECK(out->went);
    return out->state.get("mark").as_string();
  };
  // Same name and length, one byte apart: the guest keeps each compiled, and runs the right one.
  constexpr const char* kA = "function start(s) s.mark = type(leaked) .. 'A' leaked = 1 agent.go('peer B', 'next') end";
  constexpr const char* kB = "function start(s) s.mark = type(leaked) .. 'B' leaked = 1 agent.go('peer B', 'next') end";
  for (int i = 0; i < 3; ++i) CHECK(mark(kA) == "nilA");
  CHECK(mark(kB) == "nilB");
  CHECK(mark(kA) == "nilA");
  CHECK(look_by_run(*jail) == before);
  CHECK(jail->status().guests_started == 1);
}
