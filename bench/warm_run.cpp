// What a warm guest spends inside itself on one small evaluation, in process and without the
// channel: run_weak on the prepared state (the chunk, one host call, the result converted),
// then reset_after_run (the arena back to the snapshot). Prints the median and p99 of each
// part, the snapshot's size and the bytes a reset rewrote. The loop is also the driver for a
// callgrind profile of a warm guest's per-run work (docs/bench.md).
// --agent-step: a weak agent step instead (a tour's step: one host call, the 4 KB state back,
// agent.go), on the prepared state (run_weak_agent); --agent-step-fresh: the same step in a
// fresh state built in the arena each time (run_agent, what a warm guest did before).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/small_eval.hpp"
#include "bench/stats.hpp"
#include "sandbox/guest/arena.hpp"
#include "sandbox/lua/lua_heap.hpp"
#include "sandbox/guest/warm_state.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace {

using namespace sojourn;
using bench::Clock;
using bench::StoreStub;
using bench::us_since;
constexpr const char* kChunk = bench::kSmallEvalChunk;

constexpr const char* kAgentChunk = R"(
local M = {}
function M.hop(s)
  node.call("bench.mark")
  s.left = s.left - 1
  local a, b = s.stops[1], s.stops[2]
  s.stops[1], s.stops[2] = b, a
  agent.go(a, "hop")
end
return M)";

}  // namespace

int main(int argc, char** argv) {
  const long runs = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 5000;
  const std::string mode = argc > 2 ? argv[2] : "";
  if (runs < 1 || runs > 10'000'000 || (!mode.empty() && mode != "--agent-step" && mode != "--agent-step-fresh")) {
    std::fprintf(stderr, "usage: bench_warm_run [RUNS] [--agent-step|--agent-step-fresh]   (1..10000000, default 5000)\n");
    return 2;
  }
  const Limits limits{20'000, 16u << 20, 2'000};
  // The arena a jailed guest maps for this quota, at its address.
  Result<sandbox::guest::FixedArena> arena = sandbox::guest::FixedArena::map_at(
      sandbox::guest::kArenaBase, sandbox::guest::arena_bytes_for_quota(limits.memory_bytes));
  if (!arena) {
    std::fprintf(stderr, "bench_warm_run: %s\n", arena.error().message.c_str());
    return 1;
  }
  sandbox::use_lua_heap(&*arena);
  sandbox::guest::prepare_warm_state(false);
  StoreStub host;
  sandbox::RunInput input;
  input.source = kChunk;
  input.chunk_name = "eval";
  input.args = Value::table();
  input.limits = limits;
  std::vector<double> run_us, reset_us;
  run_us.reserve(static_cast<std::size_t>(runs));
  reset_us.reserve(static_cast<std::size_t>(runs));
  Value state = Value::table();
  state.set("left", 1'000'000);
  state.set("stops", Value::array({Value("127.0.0.1:1"), Value("127.0.0.1:2")}));
  state.set("payload", std::string(4096, 'x'));
  const sandbox::AgentInput agent{"hop", state, Value::table()};
  if (!mode.empty()) {
    input.source = kAgentChunk;
    input.chunk_name = "bouncer";
    input.limits.cpu_instructions = 1'000'000;
  }
  for (long i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    if (!mode.empty()) {
      Result<sandbox::AgentOutcome> step = mode == "--agent-step" ? sandbox::guest::run_weak_agent(input, agent, &host)
                                                                  : sandbox::run_agent(input, agent, &host);
      run_us.push_back(us_since(t0));
      if (!step || !step->went || step->state.get("left").as_integer() != 999'999) {
        std::fprintf(stderr, "bench_warm_run: step %ld: %s\n", i, step ? "unexpected outcome" : step.error().message.c_str());
        return 1;
      }
    } else {
      Result<Value> result = sandbox::guest::run_weak(input, &host);
      run_us.push_back(us_since(t0));
      if (!result || !result->is_table() || !result->get(Value(std::int64_t{1})).is_integer() ||
          result->get(Value(std::int64_t{1})).as_integer() != 2) {
        std::fprintf(stderr, "bench_warm_run: run %ld: %s\n", i, result ? "unexpected result" : result.error().message.c_str());
        return 1;
      }
    }
    const auto t1 = Clock::now();
    sandbox::guest::reset_after_run();
    reset_us.push_back(us_since(t1));
  }
  const sandbox::guest::WarmStateStats stats = sandbox::guest::warm_state_stats();
  std::printf("| part | median us | p99 us |\n|---|---:|---:|\n");
  const bench::LatencySummary run = bench::summarize(run_us);
  const bench::LatencySummary reset = bench::summarize(reset_us);
  const char* what = mode.empty() ? "run_weak" : mode == "--agent-step" ? "run_weak_agent" : "run_agent (fresh state)";
  std::printf("| %s | %.2f | %.2f |\n", what, run.median_us, run.p99_us);
  std::printf("| reset_after_run | %.2f | %.2f |\n", reset.median_us, reset.p99_us);
  std::printf("snapshot %zu bytes; last reset rewrote %zu bytes\n", stats.snapshot_bytes, stats.last_reset_bytes);
  return 0;
}
