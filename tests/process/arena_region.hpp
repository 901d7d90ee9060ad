// Shared by the arena tests (arena_test, arena_pages_test, arena_limits_test): a heap block
// standing in for the arena's mapped region, so that most cases need no fixed address.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace arena_test {

// A heap block standing in for the mapped region, 16-byte aligned.
struct Region {
  explicit Region(std::size_t length) : size(length), storage(new std::byte[length + 16]) {}
  void* aligned() {
    // SAFETY: rounding up by less than 16 stays inside the 16 spare bytes of the block.
    auto at = reinterpret_cast<std::uintptr_t>(storage.get());
    return reinterpret_cast<void*>((at + 15) & ~std::uintptr_t{15});
  }
  std::size_t size;
  std::unique_ptr<std::byte[]> storage;
};

}  // namespace arena_test
