// The guest's C++ heap: malloc and friends replaced (in the guest executables only) by
// the arena allocator over a second fixed region, reserved at the first allocation. After
// its filter is in place a guest then needs no memory syscall at all, and the C++ side of
// a run (request and result Values, frames) has a cap of its own.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sojourn::sandbox::guest {

// Below the Lua arena (kArenaBase), far above the image, the stack and glibc's mappings.
inline constexpr std::uintptr_t kCxxHeapBase = 0x0800'0000'0000;
// Virtual size of the region; pages are backed only as they are touched.
inline constexpr std::size_t kCxxHeapBytes = std::size_t{8} << 30;

// Bytes the C++ heap may hold from now on, on top of what it holds now (malloc returns
// null past it, operator new throws bad_alloc). Set by a new guest for its run.
void limit_cxx_heap(std::size_t more_bytes) noexcept;
std::size_t cxx_heap_in_use() noexcept;
// In a guest just forked from the zygote, before its first allocation: later blocks come from
// fresh pages past everything the zygote's heap ever held, packed together, instead of from
// the blocks the zygote freed (each on a page the fork shares copy-on-write, so each first
// write there copies a page). The zygote's blocks are still freed into its own arena. Once.
void begin_fresh_cxx_heap() noexcept;

}  // namespace sojourn::sandbox::guest
