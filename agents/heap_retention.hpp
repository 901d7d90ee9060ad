// How a node keeps the memory its large messages use (heap_retention.cpp).
#pragma once

namespace sojourn {

// Once per process: glibc's malloc keeps freed blocks of up to kRetainedBlockBytes in its
// arenas instead of mapping them per allocation and returning them to the kernel on free.
// Left alone when the user chose either threshold (GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_,
// MALLOC_TRIM_THRESHOLD_). Returns true when this call set them.
// Also limits malloc to one arena (M_ARENA_MAX), unless the user chose a number
// (MALLOC_ARENA_MAX, glibc.malloc.arena_max): each thread's own arena grew once to hold a
// large state, a node's first large hops paying for it.
bool retain_freed_heap_memory();

}  // namespace sojourn
