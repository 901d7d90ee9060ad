// run_lua, the `trusted` isolation level: one capped lua_State per run (fresh, or prepared
// and pooled, lua_state_pool.hpp), one protected
// call that builds the environment, loads and runs the chunk and converts its results, and
// one function that maps every way a run can fail to a sojourn Error.
#include "sojourn/sandbox/lua_sandbox.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <string>

#include <lua.hpp>

#include "sandbox/lua/lua_agent.hpp"
#include "sandbox/lua/lua_bytecode.hpp"
#include "sandbox/lua/lua_env.hpp"
#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/lua/lua_source_scan.hpp"
#include "sandbox/lua/lua_state_pool.hpp"
#include "sandbox/lua/lua_strong.hpp"
#include "sandbox/lua/lua_strong_driver.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace sojourn::sandbox {

namespace lua {

void register_deferred_chunk(lua_State* L) {
  void* ud = nullptr;
  // A state whose allocator is capped_alloc has a RunContext as the allocator's data.
  if (lua_getallocf(L, &ud) != &detail::capped_alloc || ud == nullptr) return;
  auto& ctx = *static_cast<detail::RunContext*>(ud);
  if (ctx.deferred_chunk_name.empty()) return;
  register_chunk(L, ctx.deferred_chunk_name, ctx.deferred_chunk_source);
  ctx.deferred_chunk_name = {};
  ctx.deferred_chunk_source = {};
}

void note_pushed_function(lua_State* L) noexcept {
  void* ud = nullptr;
  if (lua_getallocf(L, &ud) != &detail::capped_alloc || ud == nullptr) return;
  ++static_cast<detail::RunContext*>(ud)->functions_pushed;
}

void note_registry_write(lua_State* L) noexcept {
  void* ud = nullptr;
  if (lua_getallocf(L, &ud) != &detail::capped_alloc || ud == nullptr) return;
  ++static_cast<detail::RunContext*>(ud)->registry_writes;
}

}  // namespace lua

namespace detail {

namespace {

// "eval:3: boom" carries a position of the chunk; LuaJIT shortens "=name" to 59 bytes.
bool has_chunk_position(std::string_view message, std::string_view chunk) {
  chunk = chunk.substr(0, LUA_IDSIZE - 1);
  if (message.substr(0, chunk.size()) != chunk) return false;
  std::size_t i = chunk.size();
  if (i >= message.size() || message[i] != ':') return false;
  const std::size_t digits = ++i;
  while (i < message.size() && message[i] >= '0' && message[i] <= '9') ++i;
  return i > digits && i < message.size() && message[i] == ':';
}

}  // namespace

// Every failed run ends here. Kills are decided by the flag, never by the message, so a
// script cannot fake one with error("CPU limit of ...").
Error run_failure(lua_State* L, int status, const RunContext& ctx, std::string_view chunk) {
  if (ctx.kill != Errc::ok) return detail::limit_error(ctx.kill, ctx.limits);
  if (status == LUA_ERRMEM) return detail::limit_error(Errc::memory_limit, ctx.limits);
  switch (lua_type(L, -1)) {
    case LUA_TSTRING: {
      std::size_t len = 0;
      const char* text = lua_tolstring(L, -1, &len);
      const std::string_view message(text, len);
      // A limit raised by a guard, reaching the top unchanged.
      if (ctx.last_limit.code != Errc::ok && message == ctx.last_limit.message) return ctx.last_limit;
      if (has_chunk_position(message, chunk)) return make_error(Errc::lua_error, "Lua error at " + std::string(message));
      return make_error(Errc::lua_error, "Lua error: " + std::string(message));
    }
    case LUA_TNUMBER: {
      char buf[48];
      std::snprintf(buf, sizeof buf, LUA_NUMBER_FMT, lua_tonumber(L, -1));
      return make_error(Errc::lua_error, std::string("Lua error: ") + buf);
    }
    default:
      return make_error(Errc::lua_error, std::string("Lua error: (error object is a ") +
                                             lua_typename(L, lua_type(L, -1)) + " value)");
  }
}

std::optional<Error> refused_input(const RunInput& input, bool source_scanned) {
  const Limits& limits = input.limits;
  if (limits.cpu_instructions == 0 || limits.memory_bytes == 0 || limits.wall_ms == 0) {
    return errors::invalid_argument("every limit of a Lua run must be non-zero");
  }
  if (!input.source.empty() && input.source.front() == '\x1b') {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: bytecode is not accepted");
  }
  // The lexer would open the FFI for them: no cdata from a peer, and no FFI state to break.
  if (!source_scanned && lua::has_cdata_literal(input.source)) return detail::cdata_refused_error();
  if (input.abort != nullptr && input.abort->load(std::memory_order_relaxed)) {
    return detail::limit_error(Errc::shutting_down, limits);
  }
  return std::nullopt;
}

}  // namespace detail

using detail::refused_input;
using detail::run_failure;

namespace {

using detail::RunContext;

// The collector's pause for strong agents (lua_gc LUA_GCSETPAUSE; see where it is set).
constexpr int kStrongGcPause = 150;

struct LuaStateCloser {
  void operator()(lua_State* L) const noexcept { lua_close(L); }
};

struct RunJob {
  const RunInput* input;
  std::string chunk_name;  // "=name": LuaJIT shows it verbatim in messages
  std::optional<Result<Value>> result;
  const AgentInput* agent = nullptr;  // set for agent runs
  int state_ref = LUA_NOREF;          // the agent's state table, in the registry
  bool strong = false;                // a strong step: the entry runs in a coroutine
  lua_State* strong_co = nullptr;     // that coroutine, started after the protected call
  detail::PooledState* pooled = nullptr;  // set when the run takes a prepared state
  bool environment_ready = false;         // a warm guest's prepared state: only the agent table to add
  detail::CompiledChunk compiled{};       // ... and its chunk already compiled (slot > 0)
  bool scan_global_writes = false;        // a pooled run: learn whether its chunk holds a GSET
  bool source_scanned = false;            // a pooled run: the text is the state's scanned_source
};

std::string_view display_chunk_name(const RunInput& input) {
  return input.chunk_name.empty() ? std::string_view("eval") : input.chunk_name;
}

// Converts the values on top of the stack into job.result, with the conversion's own memory
// room; raises the memory limit when it runs out.
void collect_results(lua_State* L, RunJob& job, RunContext& ctx, int count) {
  // Lua-side room for the conversion's queue; the C++ side has its own cap.
  ctx.byte_cap = ctx.bytes_in_use + std::min(ctx.byte_cap, SIZE_MAX - ctx.bytes_in_use);
  bool out_of_memory = false;
  try {
    job.result = lua::pop_as_array(L, count, {"result", ctx.limits.memory_bytes});
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  if (out_of_memory) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
}

// For an agent: the chunk's returned table (or the globals) holds the entry point; it is
// called with the state table, which stays in the registry for the conversion afterwards.
int call_agent_entry(lua_State* L, RunJob& job, RunContext& ctx, int chunk_results) {
  const AgentInput& agent = *job.agent;
  lua_settop(L, chunk_results > 0 ? 1 : 0);
  if (chunk_results > 0 && lua_istable(L, 1)) {
    lua_pushlstring(L, agent.entry.data(), agent.entry.size());
    lua_rawget(L, 1);
  } else {
    lua_pushlstring(L, agent.entry.data(), agent.entry.size());
    lua_rawget(L, LUA_GLOBALSINDEX);
  }
  if (!lua_isfunction(L, -1)) {
    const std::string message = "agent entry point '" + std::string(agent.entry) + "' is not a function";
    lua_pushlstring(L, message.data(), message.size());
    return lua_error(L);
  }
  // A function in the state that must not be rebuilt fails the step as sandbox_refused.
  Result<int> pushed = lua::push_value_protected(L, agent.state.is_table() ? agent.state : Value::table(),
                                                 ctx.limits.memory_bytes);
  if (!pushed.ok()) {
    detail::reraise_pending_kill(L);  // a kill met while rebuilding a closure
    if (pushed.error().code == Errc::memory_limit) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
    detail::raise_limit(L, pushed.error());
  }
  lua_pushvalue(L, -1);
  lua::note_registry_write(L);
  job.state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, LUA_GLOBALSINDEX, "agent");
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "state");
  lua_pop(L, 1);
  if (job.strong) {
    // Resumed from plain C once this protected call has returned (strong::resume_agent), so
    // that at a stop no C frame of Lua remains.
    job.strong_co = strong::start_agent(L, 1);
    return 0;
  }
  // The entry runs in a coroutine resumed from here: agent.go and agent.wait yield back to
  // this frame (lua_agent.cpp), a plain return from the step, not an error unwound through
  // the C++ frames below (~12% of a trusted hop's instructions). Their stop stays sticky.
  lua_State* co = lua_newthread(L);  // anchored on this stack until the step ends
  lua_insert(L, -3);                 // below the function and the state
  lua_xmove(L, co, 2);
  ctx.agent_thread = co;
  const int status = lua_resume(co, 1);
  ctx.agent_thread = nullptr;
  if (status == LUA_YIELD) {
    if (ctx.kill == Errc::agent_moving) return 0;  // agent.go or agent.wait: the step ends here
    // A bare coroutine.yield in the step itself: refused as it is outside a coroutine.
    lua_pushliteral(L, "attempt to yield from outside a coroutine");
    return lua_error(L);
  }
  if (status == LUA_ERRMEM) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
  if (status != 0) {
    lua_xmove(co, L, 1);  // the error object, as the protected call reports it
    return lua_error(L);
  }
  if (ctx.kill != Errc::ok) return 0;
  const int results = lua_gettop(co);
  lua_xmove(co, L, results);
  collect_results(L, job, ctx, results);
  return 0;
}

// A fresh state's environment, then the chunk (pushed; the status of its load).
int open_and_load(lua_State* L, RunJob& job, const RunInput& input) {
  detail::open_restricted_env(L, input.allow_jit);
  detail::open_require_remote(L);
  if (job.agent != nullptr) detail::open_agent_api(L, job.agent->info);
  // Every function of this environment (print, table.insert, agent.log, ...) travels by name.
  lua::register_library(L, LUA_GLOBALSINDEX);
  if (detail::TestGlobals open = detail::test_globals(); open != nullptr) open(L);
  if (job.strong) {
    strong::open_strong_api(L);
    // A strong agent's heap span is what each of its hops copies: a collection starts when the
    // heap reaches 1.5 times what the last one left (LuaJIT's default pause is 200, twice), so
    // less garbage is spread between live objects. The span of 1 MB of data built from
    // temporaries went from 2.9 to 2.1 MB (16 MB: 43 to 31 MB). Pause 100 (back to back)
    // halved it, but made an allocation-bound loop 4-10x slower; 150 showed no slowdown there.
    // The setting is in global_State: it travels with the image.
    lua_gc(L, LUA_GCSETPAUSE, kStrongGcPause);
  }
  // Mode "t" as a second lock behind run_lua's first-byte check: LuaJIT does not verify
  // bytecode, and crafted bytecode crashes it.
  return luaL_loadbufferx(L, input.source.data(), input.source.size(), job.chunk_name.c_str(), "t");
}

int run_protected(lua_State* L) {
  auto& job = *static_cast<RunJob*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  RunContext& ctx = detail::run_context(L);
  const RunInput& input = *job.input;
  // The environment was built when the state was prepared: this run gets its own copy of
  // the globals, made by the pool's own function, before the hook counts: a fresh state's
  // environment is not counted either.
  if (job.pooled != nullptr) detail::begin_pooled_run(L, *job.pooled);
  // Armed before anything of the input is touched, and until the results are converted:
  // rebuilding a closure of the arguments or of an agent's state runs Lua code (its chunk),
  // and pushing and converting values poll the deadline and the abort flag.
  detail::arm_count_hook(L, ctx);
  int load_status = 0;
  if (job.pooled != nullptr) {
    // The run's own `agent` table, in the run's own globals: gone with them at the reset.
    if (job.agent != nullptr) detail::open_agent_api(L, job.agent->info);
    load_status = detail::push_cached_chunk(L, *job.pooled, job.chunk_name.c_str(), input.source, job.source_scanned);
  } else if (job.environment_ready) {
    // The step's own `agent` table, in globals the caller's snapshot restore takes back.
    if (job.agent != nullptr) detail::open_agent_api(L, job.agent->info);
    if (job.compiled.slot > 0) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, job.compiled.table_ref);
      if (!lua_istable(L, -1)) return luaL_error(L, "the kept chunk's table is missing");
      lua_rawgeti(L, -1, job.compiled.slot);
      lua_remove(L, -2);
      if (!lua_isfunction(L, -1)) return luaL_error(L, "the kept chunk is missing");
    } else {
      load_status = luaL_loadbufferx(L, input.source.data(), input.source.size(), job.chunk_name.c_str(), "t");
    }
  } else {
    load_status = open_and_load(L, job, input);
  }
  if (load_status == LUA_ERRMEM) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
  if (load_status != 0) return lua_error(L);
  if (job.scan_global_writes) {
    // Once per text and state: whether the compiled chunk (every function of it) writes a
    // global. lua_dump's buffer is the state's: a memory error here is the run's.
    job.pooled->scanned_source_writes_no_global = lua::writes_no_global(L);
    job.pooled->scanned_source_global_scan_done = true;
  }
  // Functions the chunk defines may travel as text, cut out of this source. A pooled run's
  // text is registered only when one of its functions is converted (lua_function.cpp).
  if (job.pooled != nullptr) {
    ctx.deferred_chunk_name = job.chunk_name;
    ctx.deferred_chunk_source = input.source;
  } else {
    lua::register_chunk(L, job.chunk_name, input.source);
  }
  // No arguments (the usual eval): nothing to push, no protected call for it.
  int nargs = 0;
  if (input.args.is_table() && input.args.length() > 0) {
    Result<int> pushed = lua::push_array_items_protected(L, input.args, ctx.limits.memory_bytes);
    if (!pushed.ok()) {
      detail::reraise_pending_kill(L);  // a kill met while rebuilding a closure
      if (pushed.error().code == Errc::memory_limit) detail::raise_limit(L, detail::limit_error(Errc::memory_limit, ctx.limits));
      detail::raise_limit(L, pushed.error());
    }
    nargs = *pushed;
  }

  lua_call(L, nargs, LUA_MULTRET);
  if (ctx.kill != Errc::ok) return 0;  // the chunk returned after swallowing a kill
  if (job.agent != nullptr) return call_agent_entry(L, job, ctx, lua_gettop(L));
  collect_results(L, job, ctx, lua_gettop(L));
  return 0;
}

}  // namespace

namespace detail {

void start_context(RunContext& ctx, const RunInput& input, HostCalls* host, std::uintptr_t stack_here,
                   std::size_t bytes_in_use) {
  const Limits& limits = input.limits;
  ctx.limits = limits;
  ctx.host = host;
  ctx.abort = input.abort;
  ctx.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(limits.wall_ms);
  ctx.c_stack_floor = stack_here > kCStackBudget ? stack_here - kCStackBudget : 0;
  ctx.bytes_in_use = bytes_in_use;
  ctx.byte_cap = limits.memory_bytes > SIZE_MAX ? SIZE_MAX : static_cast<std::size_t>(limits.memory_bytes);
  ctx.allocation_refused = false;
  ctx.instructions = 0;
  ctx.hook_interval = 0;
  ctx.kill = Errc::ok;
  ctx.last_limit = Error{};
  ctx.go_peer.clear();
  ctx.go_entry.clear();
  ctx.agent_thread = nullptr;
  ctx.deferred_chunk_name = {};
  ctx.deferred_chunk_source = {};
  ctx.functions_pushed = 0;
  ctx.registry_writes = 0;
}

}  // namespace detail

namespace {

// One run on a prepared state of the input's principal (lua_state_pool.hpp); `finish` sees
// the state after the protected call and makes the result, as in run_in_fresh_state. Nothing
// when no state could be prepared: the caller runs in a fresh one. The state goes back to the
// pool only when `finish` made a result, not an error, and the run met no kill, limit or
// refused allocation (when in doubt the state is thrown away and the next run prepares a new
// one). An agent step that left by agent.go or agent.wait is not killed: `finish` has cleared
// that deliberate stop (Errc::agent_moving) before the check, any other kill is still set.
template <class Finish>
auto run_in_pooled_state(const RunInput& input, HostCalls* host, RunJob& job, Finish finish)
    -> std::optional<decltype(finish(static_cast<lua_State*>(nullptr), std::declval<RunContext&>(), 0))> {
  using Out = decltype(finish(static_cast<lua_State*>(nullptr), std::declval<RunContext&>(), 0));
  detail::PooledStatePtr state = detail::take_pooled_state(input.principal);
  // The cdata scan (a lexer pass over the text) is not repeated for the text this state last
  // scanned: a client sends the same chunk again and again.
  const bool scanned = state && state->scanned_source == input.source;
  if (std::optional<Error> refused = refused_input(input, scanned)) {
    if (state) detail::return_pooled_state(std::move(state));  // untouched: it goes back as it came
    return Out(*std::move(refused));
  }
  if (!state) return std::nullopt;
  // Whether the chunk's own text can reach a library table (lexed once per text and state,
  // with the cdata scan's cache); agent steps always get the library comparison.
  bool confined = false;
  if (scanned) {
    confined = state->scanned_source_confined;
  } else if (input.source.size() <= detail::kMaxScannedSourceBytes) {
    state->scanned_source.assign(input.source);
    state->scanned_source_writes_no_global = false;
    state->scanned_source_global_scan_done = false;
    state->last_chunk_ready = false;
    confined = state->scanned_source_confined = detail::reaches_no_library(*state, input.source);
    job.source_scanned = true;
  }
  job.source_scanned = job.source_scanned || scanned;
  confined = confined && job.agent == nullptr;
  job.scan_global_writes = confined && !state->scanned_source_global_scan_done;
  RunContext& ctx = *state->ctx;
  // SAFETY: the frame address is only compared with, never dereferenced.
  detail::start_context(ctx, input, host, reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)), ctx.bytes_in_use);
  // What earlier runs left (garbage not yet collected, cached chunks) is not this run's: the
  // run may allocate its limit on top of a just-prepared state, as in a fresh one.
  const std::size_t left_over = ctx.bytes_in_use > state->baseline_bytes ? ctx.bytes_in_use - state->baseline_bytes : 0;
  ctx.byte_cap = ctx.byte_cap > SIZE_MAX - left_over ? SIZE_MAX : ctx.byte_cap + left_over;
  job.input = &input;
  job.chunk_name = std::string("=").append(display_chunk_name(input));
  job.pooled = state.get();
  lua_State* L = state->L;
  state->run_since_reset = true;
  const int status = lua_cpcall(L, run_protected, &job);
  Out out = finish(L, ctx, status);
  // A result (not an error) with no kill left: status is not 0 after agent.go, whose stop
  // `finish` has cleared; it made an error of anything else that was not 0.
  if (out.ok() && ctx.kill == Errc::ok && ctx.last_limit.code == Errc::ok && !ctx.allocation_refused) {
    // Functions pushed from values are code the text scan did not see: the comparison runs.
    // The registry is walked unless no C code wrote to it (a text that cannot name
    // require_remote, no function converted or pushed, no agent state kept).
    const bool libraries_reachable = !(confined && ctx.functions_pushed == 0);
    // The globals are kept for the next run only when nothing could have written them: the
    // text holds no GSET and cannot name `_G` (confined), and no code from outside it ran.
    const bool keep_globals = confined && ctx.functions_pushed == 0 && ctx.registry_writes == 0 &&
                              state->scanned_source_global_scan_done && state->scanned_source_writes_no_global;
    // The hook is taken off (or parked) there.
    detail::return_pooled_state(std::move(state), libraries_reachable, libraries_reachable || ctx.registry_writes != 0,
                                keep_globals);
  } else {
    detail::disarm_count_hook(L);  // the state is closed with no hook
  }
  return out;
}

// One run in a fresh capped state: `finish` sees the state after the protected call, before
// it is closed, and makes the result.
template <class Finish>
auto run_in_fresh_state(const RunInput& input, HostCalls* host, RunJob& job, Finish finish)
    -> decltype(finish(static_cast<lua_State*>(nullptr), std::declval<RunContext&>(), 0)) {
  const Limits& limits = input.limits;
  if (std::optional<Error> refused = refused_input(input)) return *std::move(refused);

  RunContext ctx;
  // SAFETY: the frame address is only compared with, never dereferenced.
  detail::start_context(ctx, input, host, reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)), 0);
  // Not zeroed: LuaJIT initialises what it allocates. Not used under an installed LuaHeap,
  // which must hold every Lua allocation itself.
  std::unique_ptr<std::byte[]> arena;
  if (installed_lua_heap() == nullptr) arena = std::make_unique_for_overwrite<std::byte[]>(detail::kArenaBytes);
  ctx.arena = arena.get();

  // Declared after ctx and the arena: the state is closed (through the allocator) first.
  std::unique_ptr<lua_State, LuaStateCloser> state(lua_newstate(detail::capped_alloc, &ctx));
  if (!state) {
    if (ctx.allocation_refused) return detail::limit_error(Errc::memory_limit, limits);
    return errors::internal("cannot create a Lua state (no randomness from getrandom)");
  }
  lua_State* L = state.get();
  job.input = &input;
  job.chunk_name = std::string("=").append(display_chunk_name(input));
  const int status = lua_cpcall(L, run_protected, &job);
  return finish(L, ctx, status);
}

}  // namespace

namespace {

Result<Value> run_result(lua_State* L, RunContext& ctx, int status, RunJob& job, const RunInput& input) {
  if (status != 0 || ctx.kill != Errc::ok) return run_failure(L, status, ctx, display_chunk_name(input));
  if (!job.result) return make_error(Errc::lua_error, "Lua error: the run ended without results");
  return std::move(*job.result);
}

// A weak agent step's outcome, from the state after the protected call (fresh or pooled).
// agent.go and agent.wait stop the step with a sticky Errc::agent_moving, which is cleared
// here: the state is then converted under the run's limits, and the step is not a kill.
Result<AgentOutcome> agent_result(lua_State* L, RunContext& ctx, int status, RunJob& job, const RunInput& input) {
  const bool left = ctx.kill == Errc::agent_moving;  // agent.go or agent.wait
  if (!left && (status != 0 || ctx.kill != Errc::ok)) return run_failure(L, status, ctx, display_chunk_name(input));
  if (job.state_ref == LUA_NOREF) return make_error(Errc::lua_error, "Lua error: the agent step ended without state");
  // The conversion runs under the run's limits (it compiles candidate texts and polls the
  // clock); leaving is not a kill there.
  if (left) ctx.kill = Errc::ok;
  detail::arm_count_hook(L, ctx);
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, job.state_ref);
  // Room for the conversion, as for results.
  ctx.byte_cap = ctx.bytes_in_use + std::min(ctx.byte_cap, SIZE_MAX - ctx.bytes_in_use);
  Result<Value> state = Value{};
  try {
    state = lua::to_value(L, -1, {"state", ctx.limits.memory_bytes});
  } catch (const std::bad_alloc&) {
    state = detail::limit_error(Errc::memory_limit, ctx.limits);
  }
  lua_settop(L, 0);
  if (ctx.kill != Errc::ok) return detail::limit_error(ctx.kill, ctx.limits);
  if (!state) return state.error();
  AgentOutcome outcome;
  outcome.state = std::move(*state);
  outcome.went = left && !ctx.go_peer.empty();
  outcome.waits = left && ctx.go_peer.empty();
  outcome.instructions = ctx.instructions;
  if (left) {
    outcome.results = Value::table();
    outcome.go_peer = ctx.go_peer;
    outcome.go_entry = ctx.go_entry;
  } else {
    if (job.result && !job.result->ok()) return job.result->error();
    outcome.results = job.result ? std::move(**job.result) : Value::table();
  }
  return outcome;
}

}  // namespace

Result<Value> run_lua(const RunInput& input, HostCalls* host) {
  if (detail::pool_serves(input.principal, input.allow_jit, input.limits.memory_bytes)) {
    RunJob job{};
    std::optional<Result<Value>> pooled = run_in_pooled_state(
        input, host, job, [&](lua_State* L, RunContext& ctx, int status) { return run_result(L, ctx, status, job, input); });
    if (pooled) return std::move(*pooled);
  }
  RunJob job{};
  return run_in_fresh_state(input, host, job,
                            [&](lua_State* L, RunContext& ctx, int status) { return run_result(L, ctx, status, job, input); });
}

namespace detail {

Result<AgentOutcome> run_agent_on_prepared(lua_State* L, RunContext& ctx, const RunInput& input, const AgentInput& agent,
                                           CompiledChunk compiled) {
  RunJob job{};
  job.agent = &agent;
  job.input = &input;
  job.chunk_name = std::string("=").append(display_chunk_name(input));
  job.environment_ready = true;
  job.compiled = compiled;
  const int status = lua_cpcall(L, run_protected, &job);
  return agent_result(L, ctx, status, job, input);
}

}  // namespace detail

Result<AgentOutcome> run_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) {
  // A weak step on a prepared state of its principal, as run_lua's runs (docs/sandbox.md).
  if (detail::pool_serves(input.principal, input.allow_jit, input.limits.memory_bytes)) {
    RunJob job{};
    job.agent = &agent;
    std::optional<Result<AgentOutcome>> pooled = run_in_pooled_state(
        input, host, job, [&](lua_State* L, RunContext& ctx, int status) { return agent_result(L, ctx, status, job, input); });
    if (pooled) return std::move(*pooled);
  }
  RunJob job{};
  job.agent = &agent;
  return run_in_fresh_state(input, host, job,
                            [&](lua_State* L, RunContext& ctx, int status) { return agent_result(L, ctx, status, job, input); });
}

}  // namespace sojourn::sandbox

namespace sojourn::sandbox::strong {

Result<AgentOutcome> run_agent_strong(const RunInput& input, const AgentInput& agent, HostCalls* host,
                                      const StopSink& at_stop) {
  RunJob job{};
  job.agent = &agent;
  job.strong = true;
  return run_in_fresh_state(input, host, job, [&](lua_State* L, detail::RunContext& ctx, int status) -> Result<AgentOutcome> {
    if (status != 0 || ctx.kill != Errc::ok || job.strong_co == nullptr) {
      return run_failure(L, status, ctx, display_chunk_name(input));
    }
    return drive(job.strong_co, ctx, display_chunk_name(input), at_stop);
  });
}

}  // namespace sojourn::sandbox::strong
