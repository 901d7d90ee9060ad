// Limits of a trusted run: the capped allocator, the count hook that stays armed after a
// kill (so pcall cannot swallow it), and the C-stack guard for C functions that call Lua.
#include "sandbox/lua/lua_limits.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>

#include <lua.hpp>

namespace sojourn::sandbox {

namespace {
std::atomic<LuaHeap*> g_lua_heap{nullptr};
}  // namespace

void use_lua_heap(LuaHeap* heap) noexcept { g_lua_heap.store(heap, std::memory_order_release); }
LuaHeap* installed_lua_heap() noexcept { return g_lua_heap.load(std::memory_order_acquire); }

}  // namespace sojourn::sandbox

namespace sojourn::sandbox::detail {

namespace {

// The heap behind the per-run block: the installed LuaHeap, else malloc.
void* heap_allocate(std::size_t size) {
  LuaHeap* heap = installed_lua_heap();
  return heap != nullptr ? heap->allocate(size) : std::malloc(size);
}
void* heap_reallocate(void* ptr, std::size_t old_size, std::size_t new_size) {
  LuaHeap* heap = installed_lua_heap();
  return heap != nullptr ? heap->reallocate(ptr, old_size, new_size) : std::realloc(ptr, new_size);
}
void heap_release(void* ptr, std::size_t size) {
  LuaHeap* heap = installed_lua_heap();
  if (heap != nullptr) {
    heap->release(ptr, size);
  } else {
    std::free(ptr);
  }
}

constexpr std::size_t kArenaAlignment = 16;  // what malloc gives, and LuaJIT expects

std::size_t arena_rounded(std::size_t size) { return (size + kArenaAlignment - 1) & ~(kArenaAlignment - 1); }

bool in_arena(const RunContext& ctx, const void* ptr) {
  // SAFETY: addresses are only compared as integers, never dereferenced here.
  const auto at = reinterpret_cast<std::uintptr_t>(ptr);
  const auto base = reinterpret_cast<std::uintptr_t>(ctx.arena);
  return ctx.arena != nullptr && at >= base && at < base + kArenaBytes;
}

bool is_last_arena_block(const RunContext& ctx, const void* ptr, std::size_t size) {
  // SAFETY: as above, an address comparison; arena_used never exceeds kArenaBytes.
  return reinterpret_cast<std::uintptr_t>(ptr) + arena_rounded(size) ==
         reinterpret_cast<std::uintptr_t>(ctx.arena) + ctx.arena_used;
}

void* arena_take(RunContext& ctx, std::size_t size) {
  const std::size_t rounded = arena_rounded(size);
  if (ctx.arena == nullptr || rounded > kArenaBytes - ctx.arena_used) return nullptr;
  // SAFETY: arena_used + rounded <= kArenaBytes, so the block lies inside the arena, and
  // every block starts on a 16-byte boundary since the arena does and sizes are rounded.
  void* block = ctx.arena + ctx.arena_used;
  ctx.arena_used += rounded;
  return block;
}

void* cached_allocate(RunContext& ctx, std::size_t size);

// Resizes a block that lives in the arena: in place when it shrinks or is the last block
// and there is room, else by moving it (the old space stays unused until the run ends).
void* arena_resize(RunContext& ctx, void* ptr, std::size_t old_size, std::size_t new_size) {
  if (new_size <= old_size) return ptr;
  if (is_last_arena_block(ctx, ptr, old_size)) {
    const std::size_t start = ctx.arena_used - arena_rounded(old_size);
    if (arena_rounded(new_size) <= kArenaBytes - start) {
      ctx.arena_used = start + arena_rounded(new_size);
      return ptr;
    }
  }
  void* block = arena_take(ctx, new_size);
  if (block == nullptr) block = cached_allocate(ctx, new_size);
  // SAFETY: both blocks hold at least old_size bytes and do not overlap (the new one was
  // taken after the old one, or comes from the heap).
  if (block != nullptr) std::memcpy(block, ptr, old_size);
  return block;
}

// The size class of a heap block of `size` bytes (0 < size <= kMaxBytes).
std::size_t block_class(std::size_t size) { return (size - 1) / SmallBlockCache::kClassBytes; }

// What to ask the heap for: a small block is rounded up to its class's largest size while a
// cache is in use, so that it can serve any request of its class once freed.
std::size_t heap_request(const RunContext& ctx, std::size_t size) {
  if (ctx.block_cache == nullptr || size > SmallBlockCache::kMaxBytes) return size;
  return (block_class(size) + 1) * SmallBlockCache::kClassBytes;
}

void* cached_allocate(RunContext& ctx, std::size_t size) {
  SmallBlockCache* cache = ctx.block_cache.get();
  if (cache != nullptr && size <= SmallBlockCache::kMaxBytes && installed_lua_heap() == nullptr) {
    void*& head = cache->heads[block_class(size)];
    if (head != nullptr) {
      void* block = head;
      // SAFETY: a cached block is a freed heap block of at least 16 bytes; its first word
      // holds the next cached block of its class (written by cached_release).
      std::memcpy(&head, block, sizeof(void*));
      cache->cached_bytes -= (block_class(size) + 1) * SmallBlockCache::kClassBytes;
      return block;
    }
  }
  return heap_allocate(heap_request(ctx, size));
}

void cached_release(RunContext& ctx, void* ptr, std::size_t size) {
  SmallBlockCache* cache = ctx.block_cache.get();
  if (cache != nullptr && ptr != nullptr && size > 0 && size <= SmallBlockCache::kMaxBytes &&
      installed_lua_heap() == nullptr) {
    const std::size_t bytes = (block_class(size) + 1) * SmallBlockCache::kClassBytes;
    if (cache->cached_bytes + bytes <= SmallBlockCache::kMaxCachedBytes) {
      void*& head = cache->heads[block_class(size)];
      // SAFETY: the block is LuaJIT's no more and holds at least 16 bytes (heap_request).
      std::memcpy(ptr, &head, sizeof(void*));
      head = ptr;
      cache->cached_bytes += bytes;
      return;
    }
  }
  heap_release(ptr, size);
}

}  // namespace

SmallBlockCache::~SmallBlockCache() {
  for (void* head : heads) {
    while (head != nullptr) {
      void* next = nullptr;
      // SAFETY: as in cached_allocate: the first word links to the next cached block.
      std::memcpy(&next, head, sizeof(void*));
      std::free(head);
      head = next;
    }
  }
}

// GC64 lets LuaJIT take memory from any address, so plain malloc serves (a non-GC64 x64
// LuaJIT refuses custom allocators: lua_newstate returns NULL there).
void* capped_alloc(void* ud, void* ptr, std::size_t old_size, std::size_t new_size) noexcept {
  auto* ctx = static_cast<RunContext*>(ud);
  // LuaJIT passes the block's real size as old_size, and 0 with a null ptr.
  const std::size_t old_bytes = ptr != nullptr ? old_size : 0;
  const bool arena_block = in_arena(*ctx, ptr);
  if (new_size == 0) {
    if (arena_block) {
      if (is_last_arena_block(*ctx, ptr, old_bytes)) ctx->arena_used -= arena_rounded(old_bytes);
    } else {
      cached_release(*ctx, ptr, old_bytes);
    }
    ctx->bytes_in_use -= old_bytes;
    return nullptr;
  }
  if (new_size > old_bytes) {
    const std::size_t growth = new_size - old_bytes;
    const std::size_t room = ctx->byte_cap > ctx->bytes_in_use ? ctx->byte_cap - ctx->bytes_in_use : 0;
    if (growth > room) {
      // LuaJIT raises LUA_ERRMEM; it has no emergency collection to retry with.
      ctx->allocation_refused = true;
      return nullptr;
    }
  }
  void* block = nullptr;
  if (ptr == nullptr) {
    block = arena_take(*ctx, new_size);
    if (block == nullptr) block = cached_allocate(*ctx, new_size);
  } else if (arena_block) {
    block = arena_resize(*ctx, ptr, old_bytes, new_size);
  } else {
    block = heap_reallocate(ptr, old_bytes, heap_request(*ctx, new_size));
  }
  if (block == nullptr) {
    if (new_size <= old_bytes) {
      // A shrink must not fail (LuaJIT assumes so): keep the larger block, count it as shrunk
      // since LuaJIT will free it with the new size.
      ctx->bytes_in_use -= old_bytes - new_size;
      return ptr;
    }
    ctx->allocation_refused = true;
    return nullptr;
  }
  ctx->bytes_in_use = ctx->bytes_in_use - old_bytes + new_size;
  return block;
}

RunContext& run_context(lua_State* L) {
  void* ud = nullptr;
  lua_getallocf(L, &ud);
  return *static_cast<RunContext*>(ud);
}

std::string limit_message(Errc code, const Limits& limits) {
  switch (code) {
    case Errc::cpu_limit:
      return errors::cpu_limit(limits.cpu_instructions).message;
    case Errc::memory_limit:
      return errors::memory_limit(limits.memory_bytes).message;
    case Errc::deadline:
      return errors::deadline(limits.wall_ms).message;
    case Errc::shutting_down:
      return errors::shutting_down().message;
    case Errc::agent_moving:
      return "agent is leaving for another node";
    default:
      return std::string(errc_name(code));
  }
}

Error limit_error(Errc code, const Limits& limits) { return make_error(code, limit_message(code, limits)); }

Error pattern_refused_error(std::size_t subject_bytes) {
  return make_error(Errc::sandbox_refused, "refused by the sandbox: pattern too complex for a subject of " +
                                               std::to_string(subject_bytes) + " bytes");
}

Error cdata_refused_error() {
  return make_error(Errc::sandbox_refused, "refused by the sandbox: cdata number literals (1LL, 1ULL, 1i) are not accepted");
}

namespace {

// The next firing lands right after the last instruction of the budget.
int next_interval(const RunContext& ctx) {
  const std::uint64_t budget = ctx.limits.cpu_instructions;
  const std::uint64_t left = budget > ctx.instructions ? budget - ctx.instructions : 0;
  return static_cast<int>(std::min<std::uint64_t>(kHookInterval, left + 1));
}

HookTick g_hook_tick = nullptr;

void count_hook(lua_State* L, lua_Debug* /*unused*/) {
  if (g_hook_tick != nullptr) g_hook_tick();
  RunContext& ctx = run_context(L);
  if (ctx.kill == Errc::ok) {
    ctx.instructions += static_cast<std::uint64_t>(ctx.hook_interval);
    if (ctx.instructions > ctx.limits.cpu_instructions) {
      ctx.kill = Errc::cpu_limit;
    } else if (ctx.abort != nullptr && ctx.abort->load(std::memory_order_relaxed)) {
      ctx.kill = Errc::shutting_down;
    } else if (std::chrono::steady_clock::now() >= ctx.deadline) {
      ctx.kill = Errc::deadline;
    } else {
      const int interval = next_interval(ctx);
      if (interval != ctx.hook_interval) {
        ctx.hook_interval = interval;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, interval);
      }
      return;
    }
  }
  raise_kill(L);
}

}  // namespace

void arm_count_hook(lua_State* L, RunContext& ctx) {
  ctx.hook_interval = next_interval(ctx);
  lua_sethook(L, count_hook, LUA_MASKCOUNT, ctx.hook_interval);
}

void disarm_count_hook(lua_State* L) { lua_sethook(L, nullptr, 0, 0); }

namespace {
void parked_hook(lua_State* /*unused*/, lua_Debug* /*unused*/) {}
}  // namespace

void park_count_hook(lua_State* L) { lua_sethook(L, parked_hook, LUA_MASKCOUNT, std::numeric_limits<int>::max()); }

void set_hook_tick(HookTick tick) noexcept { g_hook_tick = tick; }

void raise_kill(lua_State* L) {
  RunContext& ctx = run_context(L);
  // Fire on every instruction from now on: whatever catches this error, the next
  // instruction raises it again.
  ctx.hook_interval = 1;
  lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  {
    const std::string message = limit_message(ctx.kill, ctx.limits);
    lua_pushlstring(L, message.data(), message.size());
  }
  lua_error(L);
  std::abort();  // lua_error does not return
}

void raise_limit(lua_State* L, Error error) {
  RunContext& ctx = run_context(L);
  lua_pushlstring(L, error.message.data(), error.message.size());
  ctx.last_limit = std::move(error);
  lua_error(L);
  std::abort();  // lua_error does not return
}

void reraise_pending_kill(lua_State* L) {
  if (run_context(L).kill != Errc::ok) raise_kill(L);
}

namespace {

// The kill the abort flag or the clock calls for now, Errc::ok when none.
Errc due_kill(const RunContext& ctx, std::chrono::steady_clock::time_point now) {
  if (ctx.abort != nullptr && ctx.abort->load(std::memory_order_relaxed)) return Errc::shutting_down;
  if (now >= ctx.deadline) return Errc::deadline;
  return Errc::ok;
}

bool limits_armed(lua_State* L) { return lua_gethook(L) == count_hook; }

}  // namespace

void poll_limits(lua_State* L) {
  if (!limits_armed(L)) return;
  RunContext& ctx = run_context(L);
  if (ctx.kill == Errc::ok) ctx.kill = due_kill(ctx, std::chrono::steady_clock::now());
  if (ctx.kill != Errc::ok) raise_kill(L);
}

void charge_work(lua_State* L, double steps) {
  if (!limits_armed(L) || !(steps > 0)) return poll_limits(L);
  RunContext& ctx = run_context(L);
  if (ctx.kill != Errc::ok) raise_kill(L);
  const std::uint64_t budget = ctx.limits.cpu_instructions;
  const double left = budget > ctx.instructions ? static_cast<double>(budget - ctx.instructions) : 0;
  if (steps > left) {
    ctx.instructions = budget + 1;
    ctx.kill = Errc::cpu_limit;
    raise_kill(L);
  }
  ctx.instructions += static_cast<std::uint64_t>(steps);
  const auto now = std::chrono::steady_clock::now();
  ctx.kill = due_kill(ctx, now);
  const double nanos_left = std::chrono::duration<double, std::nano>(ctx.deadline - now).count();
  if (ctx.kill == Errc::ok && steps * kNanosPerStep > nanos_left) ctx.kill = Errc::deadline;
  if (ctx.kill != Errc::ok) raise_kill(L);
}

void check_c_stack(lua_State* L) {
  // SAFETY: the frame address is only compared with the floor, never dereferenced. The
  // stack grows down on every target LuaJIT supports here (x86-64, arm64).
  const auto here = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
  if (here < run_context(L).c_stack_floor) {
    luaL_error(L, "stack overflow (too many nested C calls)");
  }
}

}  // namespace sojourn::sandbox::detail
