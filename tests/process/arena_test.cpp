// Tests of the guest's fixed-address arena allocator: its mapping, reuse of freed blocks, its
// reset and restore, coalescing, clearing free pages, and reallocation. Its use by Lua and the
// pages an image keeps are in arena_pages_test.cpp; full, fragmented and corrupt arenas in
// arena_limits_test.cpp.
#include <doctest/doctest.h>

#include <sys/mman.h>

#include <cstring>
#include <random>
#include <vector>

#include "sandbox/guest/arena.hpp"
#include "tests/process/arena_region.hpp"

using arena_test::Region;
using sojourn::sandbox::guest::FixedArena;
using sojourn::sandbox::guest::kArenaBase;

TEST_CASE("the arena is mapped at its fixed address and refuses a second mapping there") {
  auto arena = FixedArena::map_at(kArenaBase, 1u << 20);
  REQUIRE(arena.ok());
  CHECK(arena->base() == kArenaBase);
  void* block = arena->allocate(100);
  CHECK(arena->contains(block));
  CHECK(reinterpret_cast<std::uintptr_t>(block) % 16 == 0);
  auto again = FixedArena::map_at(kArenaBase, 1u << 20);
  CHECK_FALSE(again.ok());
  ::munmap(reinterpret_cast<void*>(kArenaBase), arena->size());
}

TEST_CASE("freed blocks are reused, and the top shrinks back when its last block is freed") {
  Region region(1u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  const std::size_t empty = arena.high_water();
  void* a = arena.allocate(48);
  void* b = arena.allocate(48);
  arena.release(a, 48);
  CHECK(arena.allocate(40) == a);  // same 48-byte class
  void* big = arena.allocate(100000);
  const std::size_t with_big = arena.high_water();
  arena.release(big, 100000);
  CHECK(arena.high_water() < with_big);
  arena.release(b, 48);
  arena.release(a, 40);
  CHECK(arena.high_water() >= empty);
}

TEST_CASE("a reset zeroes every byte up to the highest top reached and starts over from the first block") {
  Region region(1u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  const std::size_t empty = arena.high_water();
  auto* first = static_cast<std::byte*>(arena.allocate(64));
  auto* big = static_cast<std::byte*>(arena.allocate(200000));
  std::memset(first, 0xab, 64);
  std::memset(big, 0xcd, 200000);
  arena.release(big, 200000);  // the top came back down: the peak did not
  CHECK(arena.peak() >= empty + 200000);
  const std::size_t peak = arena.peak();
  arena.reset();
  CHECK(arena.high_water() == empty);
  CHECK(arena.peak() == empty);
  const auto* bytes = static_cast<const std::byte*>(region.aligned());
  std::size_t dirty = 0;
  for (std::size_t i = empty; i < peak; ++i) dirty += bytes[i] != std::byte{0};
  CHECK(dirty == 0);
  CHECK(arena.allocate(64) == first);  // the same first block, as in a fresh arena
}

TEST_CASE("a restore brings back the snapshot's blocks and bookkeeping and zeroes what was written above it") {
  Region region(1u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  auto* kept = static_cast<std::byte*>(arena.allocate(256));
  std::memset(kept, 0x11, 256);
  auto* freed = static_cast<std::byte*>(arena.allocate(48));
  (void)arena.allocate(16);  // keeps `freed` off the top: it goes to a free list
  arena.release(freed, 48);
  const std::size_t snapshot_top = arena.high_water();
  const auto* bytes = static_cast<const std::byte*>(region.aligned());
  const std::vector<std::byte> image(bytes, bytes + snapshot_top);
  // A run: the kept block and the free list change, the top grows far and comes back.
  std::memset(kept, 0x22, 256);
  CHECK(arena.allocate(48) == freed);
  auto* big = static_cast<std::byte*>(arena.allocate(300000));
  std::memset(big, 0x33, 300000);
  arena.release(big, 300000);
  const std::size_t peak = arena.peak();
  arena.restore(image.data(), image.size());
  CHECK(arena.high_water() == snapshot_top);
  CHECK(arena.peak() == snapshot_top);
  CHECK(std::memcmp(bytes, image.data(), image.size()) == 0);
  std::size_t dirty = 0;
  for (std::size_t i = snapshot_top; i < peak; ++i) dirty += bytes[i] != std::byte{0};
  CHECK(dirty == 0);
  CHECK(kept[0] == std::byte{0x11});
  CHECK(arena.allocate(48) == freed);  // the snapshot's free list, as it was
  // Past the small sizes' chunks: a block from the top, where the snapshot's top was.
  CHECK(static_cast<std::size_t>(static_cast<std::byte*>(arena.allocate(40000)) - static_cast<std::byte*>(region.aligned())) == snapshot_top);
}

TEST_CASE("large free blocks coalesce so a bigger block fits where smaller ones were") {
  Region region(1u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  void* a = arena.allocate(200000);
  void* b = arena.allocate(200000);
  void* guard = arena.allocate(64);  // keeps a and b away from the top
  arena.release(a, 200000);
  arena.release(b, 200000);
  void* both = arena.allocate(400000);
  CHECK(both == a);
  arena.release(both, 400000);
  arena.release(guard, 64);
}

TEST_CASE("clearing free pages zeroes freed memory, keeps every live block, and lowers the top") {
  Region region(32u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  std::mt19937 random(13);
  struct Live {
    std::byte* at;
    std::size_t size;
    unsigned char fill;
  };
  std::vector<Live> live;
  std::vector<std::pair<std::byte*, std::size_t>> freed;
  // Small and large blocks interleaved, every other one freed: the free memory is spread among
  // live blocks, in both kinds of free list, and neighbours of the small lists never merge alone.
  for (int i = 0; i < 600; ++i) {
    const std::size_t size = i % 3 == 0 ? 40000 + random() % 30000 : 16 + random() % 9000;
    auto* block = static_cast<std::byte*>(arena.allocate(size));
    REQUIRE(block != nullptr);
    const auto fill = static_cast<unsigned char>(1 + i % 250);
    std::memset(block, fill, size);
    if (i % 2 == 0) live.push_back({block, size, fill});
    else freed.emplace_back(block, size);
  }
  auto* last = static_cast<std::byte*>(arena.allocate(300000));  // freed below: the top comes down
  std::memset(last, 0x5a, 300000);
  for (auto [block, size] : freed) arena.release(block, size);
  arena.release(last, 300000);
  const std::size_t top_before = arena.high_water();
  const std::size_t cleared = arena.clear_free_pages();
  CHECK(arena.high_water() <= top_before);
  std::size_t freed_bytes = 0;
  for (auto [block, size] : freed) freed_bytes += size;
  CHECK(cleared > freed_bytes / 2);  // most freed memory lies in whole pages
  // Every live block still holds its bytes.
  std::size_t damaged = 0;
  for (const Live& block : live) {
    for (std::size_t i = 0; i < block.size; ++i) damaged += block.at[i] != std::byte{block.fill};
  }
  CHECK(damaged == 0);
  // Below the top, every page with no live byte is all zero.
  const auto base = reinterpret_cast<std::uintptr_t>(region.aligned());
  const std::uintptr_t top = base + arena.high_water();
  std::vector<bool> has_live((top - base) / 4096 + 2, false);
  for (const Live& block : live) {
    const auto from = reinterpret_cast<std::uintptr_t>(block.at);
    for (std::uintptr_t page = from & ~std::uintptr_t{4095}; page < from + block.size; page += 4096) {
      has_live[(page - (base & ~std::uintptr_t{4095})) / 4096] = true;
    }
  }
  std::size_t dirty_pages = 0, free_pages = 0;
  for (std::uintptr_t page = (base + 4095) & ~std::uintptr_t{4095}; page + 4096 <= top; page += 4096) {
    if (has_live[(page - (base & ~std::uintptr_t{4095})) / 4096] || page < base + 4096) continue;
    ++free_pages;
    const auto* bytes = reinterpret_cast<const unsigned char*>(page);
    for (std::size_t i = 0; i < 4096; ++i) {
      if (bytes[i] != 0) {
        ++dirty_pages;
        break;
      }
    }
  }
  CHECK(free_pages > 100);
  // A free page may keep the 16-byte list node of a block starting on it: at most one per block.
  CHECK(dirty_pages * 4 < free_pages);
  // The arena goes on working over the cleared memory.
  for (int i = 0; i < 200; ++i) {
    const std::size_t size = 16 + random() % 50000;
    auto* block = static_cast<std::byte*>(arena.allocate(size));
    REQUIRE(block != nullptr);
    std::memset(block, 0x77, size);
  }
  for (const Live& block : live) {
    for (std::size_t i = 0; i < block.size; ++i) damaged += block.at[i] != std::byte{block.fill};
  }
  CHECK(damaged == 0);
}

TEST_CASE("realloc keeps the contents, grows in place at the top, and fails cleanly when full") {
  Region region(1u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  auto* p = static_cast<char*>(arena.allocate(5000));  // past the chunked sizes: from the top
  std::memset(p, 'x', 5000);
  auto* grown = static_cast<char*>(arena.reallocate(p, 5000, 50000));
  CHECK(grown == p);  // it was the top block
  CHECK(grown[1999] == 'x');
  void* blocker = arena.allocate(32);
  auto* moved = static_cast<char*>(arena.reallocate(grown, 50000, 60000));
  REQUIRE(moved != nullptr);
  CHECK(moved[0] == 'x');
  CHECK(moved[1999] == 'x');
  CHECK(arena.reallocate(moved, 60000, 10u << 20) == nullptr);  // more than the region
  CHECK(arena.reallocate(moved, 60000, 100) == moved);          // a shrink never fails
  arena.release(moved, 100);
  arena.release(blocker, 32);
  CHECK(arena.allocate(2u << 20) == nullptr);
}

TEST_CASE("random allocate, resize and release keep every live block intact") {
  Region region(8u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  struct Live {
    unsigned char* at;
    std::size_t size;
    unsigned char tag;
  };
  std::vector<Live> live;
  std::mt19937 rng(42);
  auto check_block = [](const Live& l) {
    for (std::size_t i = 0; i < l.size; i += 97) {
      if (l.at[i] != l.tag) return false;
    }
    return true;
  };
  int intact = 0;
  for (int step = 0; step < 20000; ++step) {
    const unsigned op = rng() % 3;
    if (op == 0 || live.empty()) {
      std::size_t size = rng() % 4 == 0 ? 1 + rng() % 20000 : 1 + rng() % 300;
      auto* at = static_cast<unsigned char*>(arena.allocate(size));
      if (at == nullptr) continue;
      const auto tag = static_cast<unsigned char>(rng());
      std::memset(at, tag, size);
      live.push_back({at, size, tag});
    } else {
      const std::size_t i = rng() % live.size();
      if (!check_block(live[i])) break;
      ++intact;
      if (op == 1) {
        const std::size_t size = 1 + rng() % 30000;
        auto* at = static_cast<unsigned char*>(arena.reallocate(live[i].at, live[i].size, size));
        if (at == nullptr) continue;
        std::memset(at, live[i].tag, size);
        live[i].at = at;
        live[i].size = size;
      } else {
        arena.release(live[i].at, live[i].size);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
  }
  for (const Live& l : live) CHECK(check_block(l));
  CHECK(intact > 5000);
}

TEST_CASE("a block reallocated across size classes keeps its contents") {
  Region region(4u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  std::size_t size = 16;
  auto* block = static_cast<std::byte*>(arena.allocate(size));
  for (std::size_t i = 0; i < size; ++i) block[i] = static_cast<std::byte>(i * 7);
  // Up through every band and past the exact lists, then back down.
  for (std::size_t next : {40u, 100u, 300u, 1000u, 5000u, 40000u, 200000u, 900u, 60u, 16u}) {
    void* neighbour = arena.allocate(48);  // keeps the block from always growing in place
    auto* moved = static_cast<std::byte*>(arena.reallocate(block, size, next));
    REQUIRE(moved != nullptr);
    bool same = true;
    for (std::size_t i = 0; i < std::min(size, next); ++i) same = same && moved[i] == static_cast<std::byte>(i * 7);
    CHECK(same);
    for (std::size_t i = size; i < next; ++i) moved[i] = static_cast<std::byte>(i * 7);
    block = moved;
    size = next;
    arena.release(neighbour, 48);
  }
  arena.release(block, size);
}
