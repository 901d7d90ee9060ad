// Tests of the guest's arena at its limits: fragmentation with live data under half the
// region, exhaustion in every band, an agent's whole quota, and an image whose bookkeeping
// points outside the region.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "sandbox/guest/arena.hpp"
#include "tests/process/arena_region.hpp"

using arena_test::Region;
using sojourn::sandbox::guest::FixedArena;

TEST_CASE("with live data under half the region, fragmentation never makes an allocation fail") {
  // Mixed sizes freed in random order: the exact-size lists are coalesced when the top
  // runs out, which is what the arena's 2x sizing relies on.
  Region region(8u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  struct Live {
    void* at;
    std::size_t size;
  };
  std::vector<Live> live;
  std::mt19937 rng(7);
  std::size_t in_use = 0;
  int failures = 0;
  int allocations = 0;
  for (int step = 0; step < 100000; ++step) {
    if (rng() % 2 == 0 || live.empty()) {
      const std::size_t size = 16 + rng() % 6000;
      if (in_use + size > region.size / 2) {
        const std::size_t i = rng() % live.size();
        arena.release(live[i].at, live[i].size);
        in_use -= live[i].size;
        live[i] = live.back();
        live.pop_back();
        continue;
      }
      void* at = arena.allocate(size);
      ++allocations;
      if (at == nullptr) {
        ++failures;
        continue;
      }
      live.push_back({at, size});
      in_use += size;
    } else {
      const std::size_t i = rng() % live.size();
      arena.release(live[i].at, live[i].size);
      in_use -= live[i].size;
      live[i] = live.back();
      live.pop_back();
    }
  }
  CHECK(allocations > 40000);
  CHECK(failures == 0);
}

namespace {

// Allocates blocks of `size` until the arena refuses; returns how many bytes it gave.
std::size_t fill_until_full(FixedArena& arena, std::size_t size, std::vector<std::pair<void*, std::size_t>>& live) {
  std::size_t given = 0;
  while (void* block = arena.allocate(size)) {
    live.emplace_back(block, size);
    given += (size + 15) & ~std::size_t{15};
  }
  return given;
}

}  // namespace

TEST_CASE("exhaustion returns null in every band, and the arena works again once blocks are freed") {
  Region region(2u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  for (std::size_t size : {24u, 200u, 1000u, 3000u, 50000u}) {
    std::vector<std::pair<void*, std::size_t>> live;
    const std::size_t given = fill_until_full(arena, size, live);
    INFO("size " << size);
    CHECK(given > region.size * 9 / 10 - size);  // nearly the whole region, whatever the size
    CHECK(arena.allocate(size) == nullptr);
    CHECK(arena.reallocate(live.front().first, size, region.size) == nullptr);
    for (auto [block, bytes] : live) arena.release(block, bytes);
  }
  arena.clear_free_pages();
  CHECK(arena.high_water() < 20000);  // everything came back: the top is down to the bookkeeping
}

TEST_CASE("an agent allocating up to its quota fits its arena, whatever the fragmentation pattern") {
  // The worst patterns for chunks of small blocks: fill the quota with small blocks, free all
  // but one per page (every chunk stays in use), then ask for the freed bytes again as blocks too
  // large for the holes; and the same across the bands in turn.
  const std::uint64_t quota = 4u << 20;
  const std::size_t bytes = sojourn::sandbox::guest::arena_bytes_for_quota(quota);
  for (std::size_t small : {16u, 64u, 256u, 1024u}) {
    for (std::size_t large : {1040u, 4096u, 40000u, 1u << 20}) {
      Region region(bytes);
      FixedArena arena = FixedArena::over(region.aligned(), region.size);
      std::vector<std::pair<void*, std::size_t>> kept;
      std::size_t in_use = 0;
      std::vector<void*> all;
      while (in_use + small <= quota) {
        void* block = arena.allocate(small);
        REQUIRE(block != nullptr);
        all.push_back(block);
        in_use += small;
      }
      std::uintptr_t last_page = 0;
      for (void* block : all) {
        const auto page = reinterpret_cast<std::uintptr_t>(block) / 4096;
        if (page != last_page) {
          kept.emplace_back(block, small);
          last_page = page;
        } else {
          arena.release(block, small);
          in_use -= small;
        }
      }
      int failures = 0;
      while (in_use + large <= quota) {
        void* block = arena.allocate(large);
        if (block == nullptr) {
          ++failures;
          break;
        }
        in_use += large;
      }
      INFO("small " << small << " large " << large);
      CHECK(failures == 0);
    }
  }
}

TEST_CASE("adopt refuses an image whose chunk bookkeeping points outside the region") {
  Region region(1u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  REQUIRE(arena.allocate(200000) != nullptr);  // past where chunks start
  for (int i = 0; i < 100; ++i) REQUIRE(arena.allocate(40) != nullptr);
  REQUIRE(FixedArena::adopt(region.aligned(), region.size).ok());
  // Somewhere in the header there is a pointer into the current chunk: corrupting each word
  // that points inside the region in turn must be refused (or be harmless: the free lists).
  auto* words = static_cast<std::uintptr_t*>(region.aligned());
  const auto lo = reinterpret_cast<std::uintptr_t>(region.aligned());
  int refused = 0;
  for (std::size_t i = 0; i * 8 < 20000; ++i) {
    const std::uintptr_t was = words[i];
    if (was <= lo || was >= lo + region.size) continue;
    words[i] = lo + region.size + 4096;
    auto adopted = FixedArena::adopt(region.aligned(), region.size);
    refused += adopted.ok() ? 0 : 1;
    if (!adopted.ok()) CHECK(adopted.error().message.find("heap image") != std::string::npos);
    words[i] = was;
  }
  CHECK(refused >= 4);  // start, top, end, the band's chunk next and end
}
