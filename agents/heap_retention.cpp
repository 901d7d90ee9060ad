// A 1 MB agent hop allocates its state about seven times (the Lua string, the Value, the
// TRANSFER, the call frame, the read buffer and the decodes at the destination) and frees it
// again. With glibc's defaults those blocks are mapped per allocation (over the mmap
// threshold) or trimmed back to the kernel when a few are freed together (the trim
// threshold is twice the largest mapped block freed so far: 2 MB), so every hop faults
// ~1.7 MB of fresh zeroed pages in again: ~500 page faults a hop, more CPU than the copies
// themselves. Raising both thresholds keeps that memory in the arenas for the next hop.
//
// glibc also gives each thread that allocates its own arena (up to 8 per CPU): a node's
// network thread and workers each grow theirs to hold a 1 MB state once, so the first ten or
// so 1 MB hops between three fresh nodes took 4-19 ms each (about 150 page faults a hop, the
// arenas' fresh pages) before settling at under 1 ms, and every arena could keep
// kKeptFreeBytes free. One arena is grown once and shared: small blocks still come from each
// thread's cache without its lock.
#include "agents/heap_retention.hpp"

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace sojourn {

namespace {

// Blocks below this are served from the arenas (glibc's own ceiling for its dynamic mmap
// threshold on 64-bit: half an arena heap). Larger ones (a 64 MB strong image) are still mapped.
constexpr int kRetainedBlockBytes = 32 << 20;
// Free memory at an arena's top kept for reuse before glibc gives it back to the kernel: the
// working set of a few 1 MB hops in flight per arena. The cost is at most this much resident
// memory per arena that once held that much.
constexpr int kKeptFreeBytes = 32 << 20;

// Arenas of a node process (M_ARENA_MAX).
constexpr int kArenas = 1;

bool user_chose_arenas() {
  if (std::getenv("MALLOC_ARENA_MAX") != nullptr) return true;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  return tunables != nullptr && std::strstr(tunables, "glibc.malloc.arena_max") != nullptr;
}

bool user_chose_thresholds() {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr) return true;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  return tunables != nullptr && (std::strstr(tunables, "glibc.malloc.mmap_threshold") != nullptr ||
                                 std::strstr(tunables, "glibc.malloc.trim_threshold") != nullptr);
}

}  // namespace

bool retain_freed_heap_memory() {
  static std::once_flag once;
  static bool set = false;
  std::call_once(once, [] {
    // Before the node's threads start: an arena is chosen at a thread's first allocation.
    if (!user_chose_arenas()) (void)::mallopt(M_ARENA_MAX, kArenas);
    if (user_chose_thresholds()) return;
    // Both or neither: setting one turns glibc's dynamic threshold off for both.
    set = ::mallopt(M_MMAP_THRESHOLD, kRetainedBlockBytes) == 1 && ::mallopt(M_TRIM_THRESHOLD, kKeptFreeBytes) == 1;
  });
  return set;
}

}  // namespace sojourn
