// How a node keeps the memory its large messages use (heap_retention.cpp).
#pragma once

namespace sojourn {

// Once per process: glibc's malloc keeps freed blocks of up to kRetainedBlockBytes in its
// arenas instead of mapping them per allocation and returning them to the kernel on free.
// Left alone when the user chose either threshold (GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_,
// MALLOC_TRIM_THRESHOLD_). Returns true when this call set them.
bool retain_freed_heap_memory();

}  // namespace sojourn
