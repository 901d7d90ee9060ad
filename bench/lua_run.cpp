// What one small evaluation costs at the trusted level, in process: run_lua (a new sandboxed
// lua_State, its restricted environment and library table, the chunk, one host call, the
// result converted; again with a principal, on a pooled prepared state), against the same
// chunk in a bare LuaJIT state (luaL_newstate, the four libraries, the chunk, close) as the peer. Prints median and p99 per run, and the ratio.
// The loop is also the driver for a callgrind profile of run_lua (docs/bench.md).
#include <lua.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/small_eval.hpp"
#include "bench/stats.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace {

using namespace sojourn;
using bench::Clock;

using bench::StoreStub;
using bench::us_since;
constexpr const char* kChunk = bench::kSmallEvalChunk;

int stub_call(lua_State* L) {
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "x");
  return 1;
}

// One run in a bare state; false on any error.
bool bare_run() {
  lua_State* L = luaL_newstate();
  if (L == nullptr) return false;
  for (lua_CFunction open : {luaopen_base, luaopen_string, luaopen_table, luaopen_math}) {
    lua_pushcfunction(L, open);
    lua_call(L, 0, 0);
  }
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, stub_call);
  lua_setfield(L, -2, "call");
  lua_setglobal(L, "node");
  const bool ok = luaL_loadstring(L, kChunk) == 0 && lua_pcall(L, 0, 1, 0) == 0 && lua_tointeger(L, -1) == 2;
  lua_close(L);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const long runs = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 5000;
  if (runs < 1 || runs > 10'000'000) {
    std::fprintf(stderr, "usage: bench_lua_run [RUNS]   (1..10000000, default 5000)\n");
    return 2;
  }
  StoreStub host;
  sandbox::RunInput input;
  input.source = kChunk;
  input.chunk_name = "eval";
  input.args = Value::table();
  input.limits = Limits{20'000, 16u << 20, 2'000};
  // The same run with a principal, as the node's runs have: a pooled prepared state.
  sandbox::RunInput pooled_input = input;
  pooled_input.principal = "bench";
  std::vector<double> sandboxed, pooled, bare;
  sandboxed.reserve(static_cast<std::size_t>(runs));
  pooled.reserve(static_cast<std::size_t>(runs));
  bare.reserve(static_cast<std::size_t>(runs));
  // Alternating, so that the VM's drift hits both alike.
  for (long i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    Result<Value> r = sandbox::run_lua(input, &host);
    sandboxed.push_back(us_since(t0));
    if (!r || r->get(1).as_integer() != 2) {
      std::fprintf(stderr, "bench_lua_run: run_lua failed: %s\n", r ? "wrong result" : r.error().message.c_str());
      return 1;
    }
    t0 = Clock::now();
    r = sandbox::run_lua(pooled_input, &host);
    pooled.push_back(us_since(t0));
    if (!r || r->get(1).as_integer() != 2) {
      std::fprintf(stderr, "bench_lua_run: pooled run_lua failed: %s\n", r ? "wrong result" : r.error().message.c_str());
      return 1;
    }
    t0 = Clock::now();
    if (!bare_run()) {
      std::fprintf(stderr, "bench_lua_run: the bare state failed\n");
      return 1;
    }
    bare.push_back(us_since(t0));
  }
  const bench::LatencySummary s = bench::summarize(std::move(sandboxed)), p = bench::summarize(std::move(pooled)),
                             b = bench::summarize(std::move(bare));
  std::printf("one small evaluation in process (%ld runs each, alternating)\n\n", runs);
  std::printf("| run | median us | p99 us | median / bare state |\n|---|---:|---:|---:|\n");
  std::printf("| run_lua (sandboxed state, environment, library table, host call) | %.1f | %.1f | %.2f |\n", s.median_us,
              s.p99_us, b.median_us > 0 ? s.median_us / b.median_us : 0.0);
  std::printf("| run_lua with a principal (a pooled prepared state, fresh globals, cached chunk) | %.1f | %.1f | %.2f |\n",
              p.median_us, p.p99_us, b.median_us > 0 ? p.median_us / b.median_us : 0.0);
  std::printf("| bare LuaJIT state (luaL_newstate, 4 libraries, the chunk, close) | %.1f | %.1f | 1.00 |\n", b.median_us,
              b.p99_us);
  return 0;
}
