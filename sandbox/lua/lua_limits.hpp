// The state of one trusted run and the limits it enforces: the capped allocator, the
// instruction-count hook (CPU budget, deadline, abort), the C-stack guard and the errors they raise.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "sandbox/lua/lua_heap.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

struct lua_State;

namespace sojourn::sandbox::detail {

// Small blocks a pooled state freed, kept for its next allocations of the same size class
// (a pooled state's arena is full once prepared, so every per-run allocation went to malloc
// and every collection's frees back to free: ~28 of each per small evaluation, ~5% of its
// instructions). Each block came from the heap rounded up to its class's largest size, so
// any block of a class serves any request of that class. Blocks here are not the state's:
// bytes_in_use does not count them, as it does not count what malloc keeps. Bounded by
// kMaxCachedBytes; freed with the context.
struct SmallBlockCache {
  static constexpr std::size_t kClassBytes = 16;
  static constexpr std::size_t kClasses = 16;  // blocks of up to 256 bytes
  static constexpr std::size_t kMaxBytes = kClassBytes * kClasses;
  static constexpr std::size_t kMaxCachedBytes = std::size_t{128} << 10;

  SmallBlockCache() = default;
  SmallBlockCache(const SmallBlockCache&) = delete;
  SmallBlockCache& operator=(const SmallBlockCache&) = delete;
  ~SmallBlockCache();

  void* heads[kClasses] = {};  // each free block's first word links to the next
  std::size_t cached_bytes = 0;
};

// Reached from a lua_State through the allocator's userdata, so the allocator, the hook and
// every C function of the sandbox find it without globals (runs are concurrent).
struct RunContext {
  Limits limits;
  HostCalls* host = nullptr;
  const std::atomic<bool>* abort = nullptr;
  std::chrono::steady_clock::time_point deadline;
  std::uintptr_t c_stack_floor = 0;  // C functions refuse to nest below this address

  std::size_t bytes_in_use = 0;
  std::size_t byte_cap = 0;           // limits.memory_bytes while the chunk runs
  // Bytes of the state that collectgarbage("count") leaves out: a warm guest's compiled
  // chunks kept in its snapshot (sandbox/guest/warm_state.cpp), never freed by a run and
  // not charged to it. Zero elsewhere.
  std::size_t hidden_bytes = 0;
  bool allocation_refused = false;
  std::byte* arena = nullptr;         // kArenaBytes for the run's first allocations, or null
  std::size_t arena_used = 0;
  // Set for pooled states before their lua_State is made (every heap block then has its
  // class's size); null otherwise, and ignored while a LuaHeap is installed.
  std::unique_ptr<SmallBlockCache> block_cache;

  std::uint64_t instructions = 0;     // counted at each hook firing
  int hook_interval = 0;

  // A kill (cpu_limit, deadline, shutting_down) is sticky: once set, the hook re-raises it
  // on every instruction and the run fails with it whatever the script does.
  Errc kill = Errc::ok;
  // The last non-sticky limit hit (a refused string.rep or pattern): the run fails with it
  // only if its error reaches the top unchanged. Errc::ok when none.
  Error last_limit;

  // agent.go: the kill is Errc::agent_moving, and where to go is kept here.
  std::string go_peer;
  std::string go_entry;
  // The coroutine a weak agent step's entry runs in (null outside one): agent.go and
  // agent.wait called right in it, where it can yield, end the step by a yield back to the
  // step's C code instead of an error unwound through every C frame.
  lua_State* agent_thread = nullptr;

  // A pooled run's chunk (name and text, alive for the run), registered for its functions'
  // texts (lua::register_chunk) only once a function is converted to a Value: most runs
  // convert none, and the pool's reset would remove the registration anyway. Empty when
  // none is pending; cleared at the start and the end of each run.
  std::string_view deferred_chunk_name;
  std::string_view deferred_chunk_source;
  // Functions pushed from values during the run (lua::push_rebuilt_function: rebuilt from a
  // text, or a library function by its name): code that is not the run's chunk, so a pooled
  // run with any gets the library comparison (reaches_no_library covers the chunk only).
  std::uint32_t functions_pushed = 0;
  // Writes to the registry during the run by the sandbox's C code (lua::note_registry_write:
  // the texts and functions registered for travel, an agent's state reference). A pooled run
  // with none, and whose text cannot reach require_remote, leaves the registry as prepared.
  std::uint32_t registry_writes = 0;
};

// C stack that C functions of one run may use below run_lua's frame: LuaJIT checks its own
// stack but not the C stack, and string.gsub or coroutine.resume recursion overflows it.
inline constexpr std::size_t kCStackBudget = std::size_t{1} << 20;
// A fresh state with its environment makes ~340 small allocations (~28 KB): the allocator
// bumps them out of one block of this size, freed with the state, instead of malloc'ing
// each (a third of a short run's cost). Blocks freed inside it are only reused at its end.
inline constexpr std::size_t kArenaBytes = std::size_t{64} << 10;
// Instructions between two firings of the count hook.
inline constexpr int kHookInterval = 1000;

// lua_Alloc over the arena, then the installed LuaHeap or malloc, that refuses to hold more than ctx->byte_cap bytes.
void* capped_alloc(void* ud, void* ptr, std::size_t old_size, std::size_t new_size) noexcept;

RunContext& run_context(lua_State* L);

// Installs the count hook for the CPU budget, the deadline and the abort flag.
void arm_count_hook(lua_State* L, RunContext& ctx);
void disarm_count_hook(lua_State* L);
// Between two runs of a pooled state whose reset runs no Lua code: a count hook that does
// nothing and fires only after INT_MAX instructions (none run), in place of no hook. LuaJIT
// rewrites its whole dispatch table each time the count mask goes on or off (lua_sethook:
// ~300 instructions each way); parked, the next arm_count_hook only sets the hook and its
// count. limits_armed is false while parked.
void park_count_hook(lua_State* L);
// Called at every firing of the count hook, before its checks, when set (null: none). The
// warm guest's: answers of a burst held back while a later run of it runs go out once they
// are old (guest_serve.cpp, docs/jails.md "Bursts"). One per process; set once, at start.
using HookTick = void (*)() noexcept;
void set_hook_tick(HookTick tick) noexcept;

// The message of a kill or memory limit, e.g. "CPU limit of 100 instructions exceeded".
std::string limit_message(Errc code, const Limits& limits);
Error limit_error(Errc code, const Limits& limits);

// What every run checks before any state is touched (zero limits, bytecode, cdata literals,
// an abort already raised), in run_lua's order and words; nullopt when the run may start.
// `source_scanned`: these very bytes passed the cdata scan before (a pooled state keeps the
// last text it scanned, compared in full), so the scan is not repeated.
std::optional<Error> refused_input(const RunInput& input, bool source_scanned = false);

// Sets a run's limits, plumbing and counters in `ctx` (`stack_here`: the caller's frame
// address; `bytes_in_use`: what the state already holds). The arena is left as it is.
void start_context(RunContext& ctx, const RunInput& input, HostCalls* host, std::uintptr_t stack_here,
                   std::size_t bytes_in_use);

// The error of a failed run: kills decided by the context's flag, never by the message (a
// script cannot fake one with error("CPU limit of ...")), else the Lua error with its position.
Error run_failure(lua_State* L, int status, const RunContext& ctx, std::string_view chunk);
// A weak agent step (run_agent's outcome, errors and limits) on a state whose environment is
// already built, prepare_agent_api included (a warm guest's prepared state), its run context
// `ctx` already started. The step's `agent` table and globals are left in the state: the
// caller takes the state back to its snapshot after the step. With a `compiled` reference,
// the step's chunk is the function at that slot of that registry table, compiled by the
// caller from exactly this input's name and text (a warm guest's kept chunk).
struct CompiledChunk {
  int table_ref = 0;  // a registry reference to the table holding it
  int slot = 0;       // its index there; 0: none, the step compiles its chunk
};
Result<AgentOutcome> run_agent_on_prepared(lua_State* L, RunContext& ctx, const RunInput& input, const AgentInput& agent,
                                           CompiledChunk compiled = {});
Error pattern_refused_error(std::size_t subject_bytes);
// "refused by the sandbox: cdata number literals (1LL, 1ULL, 1i) are not accepted"
Error cdata_refused_error();

// Raise Lua errors (they never return).
[[noreturn]] void raise_kill(lua_State* L);
[[noreturn]] void raise_limit(lua_State* L, Error error);
// Re-raises the kill when one is pending (after a pcall or resume swallowed it).
void reraise_pending_kill(lua_State* L);
// For C code that works without running Lua instructions (pushing and converting values):
// when the run's limits are armed on L (the count hook is installed), raises the pending
// kill, or a new one when the abort flag is set or the deadline has passed. Does nothing
// on a state whose limits are not armed.
void poll_limits(lua_State* L);

// Charges `steps` of work a C function is about to do (a pattern match, a copy) to the run's
// instruction budget, then polls the limits; when the work would pass what remains of the
// budget, or would take longer than what remains before the deadline (at kNanosPerStep),
// the run is killed with cpu_limit or deadline before the work starts. Does nothing on a
// state whose limits are not armed.
void charge_work(lua_State* L, double steps);
// The time one step of C work is taken to need: a step of lstrlib's matcher was measured at
// ~5 ns (a quantifier-free pattern: 3.6e9 steps in 19 s).
inline constexpr double kNanosPerStep = 5.0;

// Raises "stack overflow (too many nested C calls)" when the C stack budget is spent.
void check_c_stack(lua_State* L);

}  // namespace sojourn::sandbox::detail
