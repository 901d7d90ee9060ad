// The prepared state of a warm guest. Everything LuaJIT keeps for a state (global_State,
// string table, registry, GC lists, stacks, hooks) is allocated through the state's allocator,
// so inside the arena; the allocator's context lives here at a fixed address. Copying the
// arena's used span back therefore returns the state to exactly what it was at the snapshot:
// run N's globals, registry entries, strings, metatables and upvalues cannot survive into run
// N+1, because none of their bytes do.
#include "sandbox/guest/warm_state.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <lua.hpp>

#include "sandbox/guest/arena.hpp"
#include "sandbox/lua/lua_agent.hpp"
#include "sandbox/lua/lua_env.hpp"
#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/lua/lua_source_scan.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace sojourn::sandbox::guest {

namespace {

using detail::RunContext;

struct Prepared {
  // The allocator's userdata: its address is inside the snapshot (global_State), so it never
  // moves. Reset field by field before each run.
  RunContext ctx;
  lua_State* L = nullptr;
  // The arena's first high_water() bytes at the snapshot: the environment, plus an agent's
  // compiled chunk when one is kept (below). What reset_after_run restores.
  std::vector<std::byte> image;
  std::size_t bytes_in_use = 0;  // ctx.bytes_in_use at the snapshot
  bool ready = false;
  bool wanted = false;  // this guest keeps one (set aside for an agent step, rebuilt after)
  std::size_t last_reset_bytes = 0;
  // A weak agent step's chunk compiled into the snapshot, so that the next steps of the same
  // chunk (a tour's steps in this guest) do not compile it again. Its key is the chunk's name
  // ("=name") and whole text, compared byte for byte; only a chunk met twice in a row is
  // kept. While one is kept, `env_image` is the environment's own snapshot: a run or a step
  // of any other chunk starts from it, byte for byte, as without the cache.
  std::string chunk_name;
  std::string chunk_source;
  std::vector<std::byte> env_image;
  std::size_t env_bytes = 0;
  std::string seen_name;  // the last step's chunk, when it is not the kept one
  std::string seen_source;
  std::uint64_t chunk_hits = 0;
};

Prepared g_prepared;

FixedArena* arena() { return dynamic_cast<FixedArena*>(installed_lua_heap()); }

void forget_kept_chunk_key() {
  Prepared& p = g_prepared;
  p.chunk_name.clear();
  p.chunk_source.clear();
  p.seen_name.clear();
  p.seen_source.clear();
  std::vector<std::byte>().swap(p.env_image);
}

// What does not depend on the request: the environment of run_lua's runs without the JIT.
int build_environment(lua_State* L) {
  detail::open_restricted_env(L, false);
  detail::open_require_remote(L);
  lua::register_library(L, LUA_GLOBALSINDEX);
  // A weak agent step's `agent` functions, named for travel as a fresh state names them.
  detail::prepare_agent_api(L);
  return 0;
}

bool build(FixedArena& heap) {
  Prepared& p = g_prepared;
  p.ctx = RunContext{};
  // Room for the environment only; each run sets its own limits.
  p.ctx.limits = Limits{1'000'000, 16u << 20, 1000};
  p.ctx.byte_cap = p.ctx.limits.memory_bytes;
  p.ctx.deadline = std::chrono::steady_clock::time_point::max();
  forget_kept_chunk_key();
  lua_State* L = lua_newstate(detail::capped_alloc, &p.ctx);
  if (L == nullptr) return false;
  // No hook while it is built: trusted code, and no run's budget to charge.
  if (lua_cpcall(L, build_environment, nullptr) != 0) {
    lua_close(L);
    heap.reset();
    return false;
  }
  lua_settop(L, 0);
  // The building's garbage goes now, once, not in a collection of every run; the image is
  // smaller, and each run starts with the collector's debt of a state that just collected.
  lua_gc(L, LUA_GCCOLLECT, 0);
  try {
    const auto* base = reinterpret_cast<const std::byte*>(heap.base());
    // SAFETY: [base, base + high_water) lies inside the mapped arena.
    p.image.assign(base, base + heap.high_water());
  } catch (const std::bad_alloc&) {
    lua_close(L);
    heap.reset();
    return false;
  }
  p.L = L;
  p.bytes_in_use = p.ctx.bytes_in_use;
  p.ready = true;
  return true;
}

void drop(FixedArena& heap) {
  Prepared& p = g_prepared;
  // The state's bytes are simply forgotten with the arena's: nothing outside it points in.
  p.ready = false;
  p.L = nullptr;
  std::vector<std::byte>().swap(p.image);
  forget_kept_chunk_key();
  heap.reset();
}

// Back to the environment's own snapshot when the image holds a kept agent chunk (the arena
// is at that image: between runs, or at the start of one).
void drop_kept_chunk(FixedArena& heap) {
  Prepared& p = g_prepared;
  if (p.env_image.empty()) return;
  p.last_reset_bytes = heap.restore(p.env_image.data(), p.env_image.size());
  p.image.swap(p.env_image);
  std::vector<std::byte>().swap(p.env_image);
  p.bytes_in_use = p.env_bytes;
  p.chunk_name.clear();
  p.chunk_source.clear();
}

struct ChunkJob {
  const RunInput* input;
  const std::string* chunk_name;
};

int compile_kept_chunk(lua_State* L) {
  const auto& job = *static_cast<const ChunkJob*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  const RunInput& input = *job.input;
  // Text only, as every step's chunk: bytecode is never accepted (refused_input has passed).
  if (luaL_loadbufferx(L, input.source.data(), input.source.size(), job.chunk_name->c_str(), "t") != 0) return lua_error(L);
  lua::register_chunk(L, *job.chunk_name, input.source);  // as run_agent_on_prepared would
  lua_setfield(L, LUA_REGISTRYINDEX, detail::kPreparedChunkKey);
  return 0;
}

// Compiles the step's chunk into the state (at the environment's snapshot, its run context
// started: the compilation is held to the step's memory limit) and takes the snapshot again
// with it. False, with the arena back at the environment's snapshot, when it does not compile
// or fit: the step then compiles the chunk itself and reports what failed in its own words.
bool keep_chunk(FixedArena& heap, const RunInput& input, const std::string& chunk_name) {
  Prepared& p = g_prepared;
  ChunkJob job{&input, &chunk_name};
  const bool compiled = lua_cpcall(p.L, compile_kept_chunk, &job) == 0 && !p.ctx.allocation_refused;
  if (compiled) {
    lua_settop(p.L, 0);
    // The parser's garbage goes now, as the environment's did: not into every step's image.
    lua_gc(p.L, LUA_GCCOLLECT, 0);
    try {
      const auto* base = reinterpret_cast<const std::byte*>(heap.base());
      // SAFETY: [base, base + high_water) lies inside the mapped arena.
      std::vector<std::byte> image(base, base + heap.high_water());
      std::string source(input.source);
      p.chunk_name = chunk_name;
      p.chunk_source = std::move(source);
      p.env_image = std::move(p.image);
      p.image = std::move(image);
      p.env_bytes = p.bytes_in_use;
      p.bytes_in_use = p.ctx.bytes_in_use;
      return true;
    } catch (const std::bad_alloc&) {
      p.chunk_name.clear();
      p.chunk_source.clear();
    }
  }
  p.last_reset_bytes = heap.restore(p.image.data(), p.image.size());
  return false;
}

struct Job {
  const RunInput* input;
  std::string chunk_name;  // "=name"
  std::optional<Result<Value>> result;
};

std::string_view display_chunk_name(const RunInput& input) {
  return input.chunk_name.empty() ? std::string_view("eval") : input.chunk_name;
}

// run_lua's protected call, minus the environment (already in the state).
int run_chunk(lua_State* L) {
  auto& job = *static_cast<Job*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  RunContext& ctx = detail::run_context(L);
  const RunInput& input = *job.input;
  detail::arm_count_hook(L, ctx);
  // Mode "t": LuaJIT does not verify bytecode (run_weak also refuses its first byte).
  const int load_status = luaL_loadbufferx(L, input.source.data(), input.source.size(), job.chunk_name.c_str(), "t");
  if (load_status == LUA_ERRMEM) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
  if (load_status != 0) return lua_error(L);
  lua::register_chunk(L, job.chunk_name, input.source);
  Result<int> pushed = lua::push_array_items_protected(L, input.args, ctx.limits.memory_bytes);
  if (!pushed.ok()) {
    detail::reraise_pending_kill(L);
    if (pushed.error().code == Errc::memory_limit) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
    detail::raise_limit(L, pushed.error());
  }
  lua_call(L, *pushed, LUA_MULTRET);
  if (ctx.kill != Errc::ok) return 0;  // the chunk returned after swallowing a kill
  // The conversion's own room for its queue, as in run_lua.
  ctx.byte_cap = ctx.bytes_in_use + std::min(ctx.byte_cap, SIZE_MAX - ctx.bytes_in_use);
  bool out_of_memory = false;
  try {
    job.result = lua::pop_as_array(L, lua_gettop(L), {"result", ctx.limits.memory_bytes});
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  if (out_of_memory) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
  return 0;
}

bool can_use_prepared(const RunInput& input) {
  const Prepared& p = g_prepared;
  // A test guest's marked chunk gets globals of its own; a run that allows the JIT needs the
  // JIT's module (never this guest's: its key says no JIT); a quota the environment alone
  // passes fails while a fresh state is built, with run_lua's words.
  return p.ready && !input.allow_jit && detail::test_globals() == nullptr &&
         input.limits.memory_bytes >= (p.env_image.empty() ? p.bytes_in_use : p.env_bytes);
}

Result<Value> run_prepared(const RunInput& input, HostCalls* host) {
  // run_lua's checks, in its order and words.
  if (std::optional<Error> refused = detail::refused_input(input)) return *std::move(refused);
  Prepared& p = g_prepared;
  drop_kept_chunk(*arena());  // a run starts from the environment alone
  RunContext& ctx = p.ctx;
  ctx = RunContext{};
  // SAFETY: the frame address is only compared with, never dereferenced.
  detail::start_context(ctx, input, host, reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)), p.bytes_in_use);
  Job job{&input, std::string("=").append(display_chunk_name(input)), std::nullopt};
  const int status = lua_cpcall(p.L, run_chunk, &job);
  if (status != 0 || ctx.kill != Errc::ok) return detail::run_failure(p.L, status, ctx, display_chunk_name(input));
  if (!job.result) return make_error(Errc::lua_error, "Lua error: the run ended without results");
  return std::move(*job.result);
}

Result<AgentOutcome> run_prepared_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) {
  Prepared& p = g_prepared;
  FixedArena& heap = *arena();
  const std::string chunk_name = std::string("=").append(display_chunk_name(input));
  // The kept chunk, when it is this step's: same name, same text, byte for byte.
  const bool kept = !p.chunk_name.empty() && p.chunk_name == chunk_name && p.chunk_source == input.source;
  // run_lua's checks, in its order and words; a kept chunk's text passed the cdata scan when
  // it was compiled in.
  if (std::optional<Error> refused = detail::refused_input(input, kept)) return *std::move(refused);
  RunContext& ctx = p.ctx;
  // SAFETY: the frame address is only compared with, never dereferenced.
  const auto frame = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
  bool compiled = kept;
  std::optional<std::chrono::steady_clock::time_point> deadline;  // the step's, from before a compilation
  if (kept) {
    ++p.chunk_hits;
  } else {
    drop_kept_chunk(heap);  // another chunk's step starts from the environment alone
    if (p.seen_name == chunk_name && p.seen_source == input.source) {
      ctx = RunContext{};
      detail::start_context(ctx, input, host, frame, p.bytes_in_use);
      deadline = ctx.deadline;
      compiled = keep_chunk(heap, input, chunk_name);
      p.seen_name.clear();
      p.seen_source.clear();
    } else {
      p.seen_name = chunk_name;
      p.seen_source.assign(input.source);
    }
  }
  ctx = RunContext{};
  detail::start_context(ctx, input, host, frame, p.bytes_in_use);
  if (deadline) ctx.deadline = *deadline;  // the compilation counts in the step's wall time, as before
  return detail::run_agent_on_prepared(p.L, ctx, input, agent, compiled);
}

}  // namespace

void prepare_warm_state(bool allow_jit) {
  FixedArena* heap = arena();
  if (allow_jit || heap == nullptr) return;
  g_prepared.wanted = true;
  (void)build(*heap);
}

Result<Value> run_weak(const RunInput& input, HostCalls* host) {
  if (!can_use_prepared(input)) return run_lua(input, host);
  return run_prepared(input, host);
}

Result<AgentOutcome> run_weak_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) {
  if (!can_use_prepared(input)) return run_agent(input, agent, host);
  return run_prepared_agent(input, agent, host);
}

void set_aside_warm_state() {
  FixedArena* heap = arena();
  if (heap != nullptr && g_prepared.ready) drop(*heap);
}

void reset_after_run() {
  FixedArena* heap = arena();
  if (heap == nullptr) return;
  Prepared& p = g_prepared;
  if (p.ready) {
    // A fresh run_lua beside the prepared state (a test chunk, a run with the JIT) closed its
    // own state; the run on the prepared one left it as it ended. Either way, back to the copy.
    p.last_reset_bytes = heap->restore(p.image.data(), p.image.size());
    return;
  }
  heap->reset();
  if (p.wanted) (void)build(*heap);
}

WarmStateStats warm_state_stats() {
  const Prepared& p = g_prepared;
  return {p.image.size(), p.last_reset_bytes, p.chunk_hits, !p.chunk_name.empty()};
}

}  // namespace sojourn::sandbox::guest
