// Where the Lua allocations of runs live. The node leaves the default (a small per-run
// block, then malloc); the guest installs its fixed-address arena so that every Lua
// allocation of its run lands in one region that can be measured, capped and checkpointed.
#pragma once

#include <cstddef>

namespace sojourn::sandbox {

// A heap with sized frees (LuaJIT always passes a block's size back). Blocks are 16-byte
// aligned. allocate/reallocate return null when the heap is full; a shrinking reallocate
// must not fail.
class LuaHeap {
 public:
  virtual ~LuaHeap() = default;
  virtual void* allocate(std::size_t size) noexcept = 0;
  virtual void* reallocate(void* block, std::size_t old_size, std::size_t new_size) noexcept = 0;
  virtual void release(void* block, std::size_t size) noexcept = 0;
};

// Process-wide: every later run_lua allocates from `heap` (null: the default). Only for a
// process that runs one chunk at a time (the guest), set before the run starts.
void use_lua_heap(LuaHeap* heap) noexcept;
LuaHeap* installed_lua_heap() noexcept;

}  // namespace sojourn::sandbox
