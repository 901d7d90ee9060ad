// The strong agent's driver (issue 13, lua_strong.hpp): runs the agent coroutine from plain C
// to its end or its next stop, checks at a stop that everything it holds can travel in a heap
// image, readies the state for the image (JIT traces flushed, a full collection) and hands the
// stop to the guest; and resumes an agent in an arena restored from an image. The step that
// starts an agent (run_agent_strong) is in lua_sandbox.cpp, with the other runs.
#include "sandbox/lua/lua_strong_driver.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <new>
#include <optional>
#include <string>

#include <lua.hpp>

#include "sandbox/lua/lua_heap.hpp"
#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/lua/lua_strong.hpp"
#include "sandbox/lua/lua_travel.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace sojourn::sandbox::strong {

using sandbox::detail::run_failure;
using sandbox::detail::RunContext;

namespace {

std::string_view display_chunk_name(const RunInput& input) {
  return input.chunk_name.empty() ? std::string_view("eval") : input.chunk_name;
}

// Runs the travel check at a stop (everything suspended, no C frame of Lua left). Returns the
// refusal agent.go or agent.checkpoint raises, or nothing when the agent may be imaged; a walk cut
// short by the deadline or the abort flag sets ctx.kill.
std::optional<std::string> refusal_at(lua_State* co, const Step& step, RunContext& ctx) {
  lua_State* L = main_thread(co);
  if (L == nullptr) return std::string("the agent's state has no main thread");
  const TravelCheck check = check_travel(L, co, [&ctx] {
    if (ctx.abort != nullptr && ctx.abort->load(std::memory_order_relaxed)) ctx.kill = Errc::shutting_down;
    else if (std::chrono::steady_clock::now() >= ctx.deadline) ctx.kill = Errc::deadline;
    return ctx.kill != Errc::ok;
  });
  if (check.outcome != TravelCheck::Outcome::refused) return std::nullopt;
  return std::string(step.stop == Stop::went ? "agent.go" : "agent.checkpoint") +
         ": cannot travel in a heap image: " + check.path;
}

int full_collection(lua_State* L) {
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}

}  // namespace

Result<AgentOutcome> drive(lua_State* co, RunContext& ctx, std::string_view chunk, const StopSink& at_stop) {
  sandbox::detail::arm_count_hook(co, ctx);
  Step step = resume_agent(co);
  // A stop whose agent holds something that cannot travel is refused before anything is
  // imaged or sent: the agent gets the reason as a Lua error at its agent.go, and goes on.
  while (ctx.kill == Errc::ok && (step.stop == Stop::went || step.stop == Stop::checkpoint)) {
    const std::optional<std::string> refused = refusal_at(co, step, ctx);
    if (!refused || ctx.kill != Errc::ok) break;
    step = resume_agent(co, &*refused);
  }
  AgentOutcome outcome;
  outcome.state = Value::table();
  outcome.results = Value::table();
  if (ctx.kill == Errc::agent_moving) {  // a weak agent.go(peer, entry) or agent.wait
    outcome.went = !ctx.go_peer.empty();
    outcome.waits = ctx.go_peer.empty();
    outcome.go_peer = ctx.go_peer;
    outcome.go_entry = ctx.go_entry;
    outcome.instructions = ctx.instructions;
    return outcome;
  }
  if (ctx.kill != Errc::ok) return sandbox::detail::limit_error(ctx.kill, ctx.limits);
  switch (step.stop) {
    case Stop::failed:
      if (lua_gettop(co) == 0) return make_error(Errc::lua_error, "Lua error: " + step.error);
      return run_failure(co, LUA_ERRRUN, ctx, chunk);
    case Stop::finished: {
      ctx.byte_cap = ctx.bytes_in_use + std::min(ctx.byte_cap, SIZE_MAX - ctx.bytes_in_use);
      Result<Value> results = Value{};
      try {
        results = lua::pop_as_array(co, step.results, {"result", ctx.limits.memory_bytes});
      } catch (const std::bad_alloc&) {
        results = sandbox::detail::limit_error(Errc::memory_limit, ctx.limits);
      }
      if (ctx.kill != Errc::ok) return sandbox::detail::limit_error(ctx.kill, ctx.limits);
      if (!results) return results.error();
      outcome.results = std::move(*results);
      break;
    }
    case Stop::went:
    case Stop::checkpoint:
      sandbox::detail::disarm_count_hook(co);
      // JIT machine code lives outside the arena (LuaJIT maps it itself): drop every trace, so
      // that no prototype or trace in the image points at code the destination lacks.
      if (lua_State* L = main_thread(co); L != nullptr) {
        luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_FLUSH);
        // A full collection, so that the garbage does not travel (the arena's free blocks are
        // zeroed next, and an image leaves zero pages out). In a protected call: a finalizer
        // that raises fails the stop instead of unwinding through here.
        if (lua_cpcall(L, full_collection, nullptr) != 0) return run_failure(L, LUA_ERRRUN, ctx, chunk);
      }
      if (Result<void> sunk = at_stop(reinterpret_cast<std::uintptr_t>(co)); !sunk) return sunk.error();
      outcome.strong_stop = true;
      outcome.checkpoint = step.stop == Stop::checkpoint;
      outcome.went = step.stop == Stop::went;
      outcome.go_peer = step.peer;
      break;
  }
  outcome.instructions = ctx.instructions;
  return outcome;
}

namespace {

struct Facts {
  const Value* info;
};

// agent[k] = v for every fact (raw sets: the agent's metatables never run here).
int set_facts(lua_State* L) {
  const Value& info = *static_cast<Facts*>(lua_touserdata(L, 1))->info;
  lua_settop(L, 0);
  lua_pushliteral(L, "agent");
  lua_rawget(L, LUA_GLOBALSINDEX);
  if (!lua_istable(L, 1)) return luaL_error(L, "the restored state has no agent table");
  lua::push_value(L, info.is_table() ? info : Value::table());
  lua_pushnil(L);
  while (lua_next(L, 2) != 0) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, 1);
  }
  return 0;
}

}  // namespace

Result<AgentOutcome> resume_agent_strong(std::uintptr_t agent_handle, const RunInput& input, const Value& info,
                                         HostCalls* host, const StopSink& at_stop) {
  const Limits& limits = input.limits;
  if (limits.cpu_instructions == 0 || limits.memory_bytes == 0 || limits.wall_ms == 0) {
    return errors::invalid_argument("every limit of a Lua run must be non-zero");
  }
  if (installed_lua_heap() == nullptr) return errors::internal("a strong resume needs the guest's arena");
  auto* co = reinterpret_cast<lua_State*>(agent_handle);
  if (lua_status(co) != LUA_YIELD) {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: no suspended agent at its handle");
  }
  // A fresh context: the image's limits, hook and host plumbing are never used.
  RunContext ctx;
  // SAFETY: the frame address is only compared with, never dereferenced.
  sandbox::detail::start_context(ctx, input, host, reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)),
                        static_cast<std::size_t>(lua_gc(co, LUA_GCCOUNT, 0)) * 1024 +
                            static_cast<std::size_t>(lua_gc(co, LUA_GCCOUNTB, 0)));
  lua_setallocf(co, sandbox::detail::capped_alloc, &ctx);
  sandbox::detail::disarm_count_hook(co);
  lua_State* L = main_thread(co);
  if (L == nullptr) return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: no main thread");
  // The JIT's on/off flag is in the image (global_State): a step without the JIT turns it off,
  // whatever the step that took the image allowed (its traces were flushed at that stop).
  if (!input.allow_jit) luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  if (ctx.bytes_in_use > ctx.byte_cap) return sandbox::detail::limit_error(Errc::memory_limit, limits);
  Facts facts{&info};
  if (const int status = lua_cpcall(L, set_facts, &facts); status != 0) {
    return run_failure(L, status, ctx, display_chunk_name(input));
  }
  return drive(co, ctx, display_chunk_name(input), at_stop);
}

}  // namespace sojourn::sandbox::strong
