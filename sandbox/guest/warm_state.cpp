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
#include <string_view>
#include <unordered_map>
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

// Compiled chunks kept in the snapshot. The lexer and parser ran on every run: the arena goes
// back to the snapshot after each one, taking the compiled function with it. Before the first
// run of a chunk (on the restored state, outside any run's limits and count), the guest
// compiles its source text, keeps the closure in a cache table made with the environment,
// collects, and takes the snapshot again; that run and every later one of the same source
// (and the same chunk name, which the function's debug information carries) call that
// closure instead of parsing. Every run still starts from the snapshot's bytes (globals,
// registry, the closure's environment). The cached closures are not charged to a run's
// memory and collectgarbage("count") leaves them out (RunContext::hidden_bytes), so a run
// counts and may allocate what it did when the snapshot held the environment alone. No
// bytecode is ever loaded: the closure came from the source text (mode "t"), compiled by this
// guest, and the cache is keyed by the whole source text compared byte for byte.
struct SourceHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
struct CachedChunk {
  std::string chunk_name;  // "=name"
  int slot = 0;            // the closure's index in the cache table
};
// Bounds: what the cache adds to the snapshot (so to every reset's copy, and to the arena
// beyond what runs are charged) stays small; a guest serves one principal, whose few scripts
// fill it.
constexpr std::size_t kMaxCachedSource = 8 * 1024;
constexpr std::size_t kMaxCachedChunks = 16;
constexpr std::size_t kMaxCachedSourceBytes = 64 * 1024;

struct Prepared {
  // The allocator's userdata: its address is inside the snapshot (global_State), so it never
  // moves. Reset field by field before each run.
  RunContext ctx;
  lua_State* L = nullptr;
  std::vector<std::byte> image;  // the arena's first high_water() bytes at the snapshot
  std::size_t bytes_in_use = 0;  // ctx.bytes_in_use at the snapshot
  // The environment alone (at the build), what runs are charged from; and what the cached
  // chunks add to the collector's count since.
  std::size_t env_bytes_in_use = 0;
  std::size_t env_gc_bytes = 0;
  std::size_t hidden_gc_bytes = 0;
  // The cache table, made with the environment (so the registry's own layout never depends
  // on what the cache holds), under this registry reference.
  int cache_table = LUA_NOREF;
  bool ready = false;
  bool wanted = false;  // this guest keeps one (set aside for an agent step, rebuilt after)
  std::size_t last_reset_bytes = 0;
  // Keyed by the source text; outside the arena (a reset does not reach it), and cleared
  // whenever the state is built or dropped (its slots name that state's cache table).
  std::unordered_map<std::string, CachedChunk, SourceHash, std::equal_to<>> chunks;
  std::size_t cached_source_bytes = 0;
  std::size_t chunk_hits = 0;
};

std::size_t gc_bytes(lua_State* L) {
  return static_cast<std::size_t>(lua_gc(L, LUA_GCCOUNT, 0)) * 1024 + static_cast<std::size_t>(lua_gc(L, LUA_GCCOUNTB, 0));
}

Prepared g_prepared;

FixedArena* arena() { return dynamic_cast<FixedArena*>(installed_lua_heap()); }

// What does not depend on the request: the environment of run_lua's runs without the JIT.
int build_environment(lua_State* L) {
  detail::open_restricted_env(L, false);
  detail::open_require_remote(L);
  lua::register_library(L, LUA_GLOBALSINDEX);
  // A weak agent step's `agent` functions, named for travel as a fresh state names them.
  detail::prepare_agent_api(L);
  lua_createtable(L, static_cast<int>(kMaxCachedChunks), 0);
  g_prepared.cache_table = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

bool build(FixedArena& heap) {
  Prepared& p = g_prepared;
  p.chunks.clear();
  p.cached_source_bytes = 0;
  p.hidden_gc_bytes = 0;
  p.cache_table = LUA_NOREF;
  p.ctx = RunContext{};
  // Room for the environment only; each run sets its own limits.
  p.ctx.limits = Limits{1'000'000, 16u << 20, 1000};
  p.ctx.byte_cap = p.ctx.limits.memory_bytes;
  p.ctx.deadline = std::chrono::steady_clock::time_point::max();
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
  p.env_bytes_in_use = p.bytes_in_use;
  p.env_gc_bytes = gc_bytes(L);
  p.ready = true;
  return true;
}

void drop(FixedArena& heap) {
  Prepared& p = g_prepared;
  // The state's bytes are simply forgotten with the arena's: nothing outside it points in.
  p.ready = false;
  p.L = nullptr;
  p.chunks.clear();
  p.cached_source_bytes = 0;
  p.hidden_gc_bytes = 0;
  p.cache_table = LUA_NOREF;
  std::vector<std::byte>().swap(p.image);
  heap.reset();
}

struct Job {
  const RunInput* input;
  std::string chunk_name;  // "=name"
  std::optional<Result<Value>> result;
};

std::string_view display_chunk_name(const RunInput& input) {
  return input.chunk_name.empty() ? std::string_view("eval") : input.chunk_name;
}

struct CacheJob {
  const std::string* chunk_name;
  std::string_view source;
  int slot = 0;
};

int compile_into_cache(lua_State* L) {
  auto& job = *static_cast<CacheJob*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, g_prepared.cache_table);
  if (!lua_istable(L, 1)) return luaL_error(L, "no chunk cache");
  if (luaL_loadbufferx(L, job.source.data(), job.source.size(), job.chunk_name->c_str(), "t") != 0) return lua_error(L);
  lua_rawseti(L, 1, job.slot);
  return 0;
}

// Before a run whose text passed the source checks, on the restored state: the chunk compiled
// into the snapshot when it fits the cache's bounds. On any failure (a syntax error, which
// the run then reports with its own limits) the arena goes back to the snapshot as it was.
void cache_chunk(FixedArena& heap, const std::string& chunk_name, std::string_view source) {
  Prepared& p = g_prepared;
  if (p.cache_table == LUA_NOREF || source.size() > kMaxCachedSource || p.chunks.size() >= kMaxCachedChunks ||
      p.cached_source_bytes + source.size() > kMaxCachedSourceBytes || p.chunks.contains(source)) {
    return;
  }
  p.ctx = RunContext{};
  p.ctx.limits = Limits{1'000'000, 16u << 20, 1000};
  p.ctx.byte_cap = p.ctx.limits.memory_bytes;
  p.ctx.deadline = std::chrono::steady_clock::time_point::max();
  p.ctx.bytes_in_use = p.bytes_in_use;
  CacheJob job{&chunk_name, source, static_cast<int>(p.chunks.size()) + 1};
  bool kept = lua_cpcall(p.L, compile_into_cache, &job) == 0;
  if (kept) {
    lua_settop(p.L, 0);
    lua_gc(p.L, LUA_GCCOLLECT, 0);
    try {
      std::vector<std::byte> image;
      const auto* base = reinterpret_cast<const std::byte*>(heap.base());
      // SAFETY: [base, base + high_water) lies inside the mapped arena.
      image.assign(base, base + heap.high_water());
      p.chunks.emplace(std::string(source), CachedChunk{chunk_name, job.slot});
      p.image.swap(image);
      p.bytes_in_use = p.ctx.bytes_in_use;
      const std::size_t gc_now = gc_bytes(p.L);
      p.hidden_gc_bytes = gc_now > p.env_gc_bytes ? gc_now - p.env_gc_bytes : 0;
      p.cached_source_bytes += source.size();
    } catch (const std::bad_alloc&) {
      kept = false;
    }
  }
  if (!kept) p.last_reset_bytes = heap.restore(p.image.data(), p.image.size());
}

// run_lua's checks, in its order and words (a kept chunk's text passed the cdata scan when it
// was compiled in: the scan depends on the text alone; the other checks still run), then the
// chunk compiled into the snapshot before its first run.
std::optional<Error> check_and_keep(const RunInput& input, const std::string& chunk_name) {
  const bool scanned = g_prepared.chunks.contains(std::string_view(input.source));
  if (std::optional<Error> refused = detail::refused_input(input, scanned)) return refused;
  if (!scanned) {
    if (FixedArena* heap = arena(); heap != nullptr) cache_chunk(*heap, chunk_name, input.source);
  }
  return std::nullopt;
}

// The kept closure's slot in the cache table for this text under this chunk name (counted as
// a hit), or 0: the run compiles its chunk.
int kept_slot(std::string_view source, const std::string& chunk_name) {
  Prepared& p = g_prepared;
  const auto cached = p.chunks.find(source);
  if (cached == p.chunks.end() || cached->second.chunk_name != chunk_name) return 0;
  ++p.chunk_hits;
  return cached->second.slot;
}

// run_lua's protected call, minus the environment (already in the state).
int run_chunk(lua_State* L) {
  auto& job = *static_cast<Job*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  RunContext& ctx = detail::run_context(L);
  const RunInput& input = *job.input;
  detail::arm_count_hook(L, ctx);
  if (const int slot = kept_slot(input.source, job.chunk_name); slot != 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, g_prepared.cache_table);
    lua_rawgeti(L, -1, slot);
    lua_remove(L, -2);
  } else {
    // Mode "t": LuaJIT does not verify bytecode (run_weak also refuses its first byte).
    const int load_status = luaL_loadbufferx(L, input.source.data(), input.source.size(), job.chunk_name.c_str(), "t");
    if (load_status == LUA_ERRMEM) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
    if (load_status != 0) return lua_error(L);
  }
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
         input.limits.memory_bytes >= p.env_bytes_in_use;
}

Result<Value> run_prepared(const RunInput& input, HostCalls* host) {
  Prepared& p = g_prepared;
  Job job{&input, std::string("=").append(display_chunk_name(input)), std::nullopt};
  if (std::optional<Error> refused = check_and_keep(input, job.chunk_name)) return *std::move(refused);
  RunContext& ctx = p.ctx;
  ctx = RunContext{};
  // SAFETY: the frame address is only compared with, never dereferenced. Charged from the
  // environment's bytes: the cached chunks are the guest's, not the run's.
  detail::start_context(ctx, input, host, reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)), p.env_bytes_in_use);
  ctx.hidden_bytes = p.hidden_gc_bytes;
  const int status = lua_cpcall(p.L, run_chunk, &job);
  if (status != 0 || ctx.kill != Errc::ok) return detail::run_failure(p.L, status, ctx, display_chunk_name(input));
  if (!job.result) return make_error(Errc::lua_error, "Lua error: the run ended without results");
  return std::move(*job.result);
}

Result<AgentOutcome> run_prepared_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) {
  // As run_prepared: a tour's steps of one chunk in this guest compile it once, into the
  // snapshot; the step takes the kept closure when its chunk name matches too.
  Prepared& p = g_prepared;
  const std::string chunk_name = std::string("=").append(display_chunk_name(input));
  if (std::optional<Error> refused = check_and_keep(input, chunk_name)) return *std::move(refused);
  const detail::CompiledChunk compiled{p.cache_table, kept_slot(input.source, chunk_name)};
  RunContext& ctx = p.ctx;
  ctx = RunContext{};
  // SAFETY: the frame address is only compared with, never dereferenced.
  detail::start_context(ctx, input, host, reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)), p.env_bytes_in_use);
  ctx.hidden_bytes = p.hidden_gc_bytes;
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
  return {g_prepared.image.size(), g_prepared.last_reset_bytes, g_prepared.chunks.size(), g_prepared.chunk_hits};
}

}  // namespace sojourn::sandbox::guest
