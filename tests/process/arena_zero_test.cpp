// The arena's zero-page tracking after a strong resume (FixedArena::track_zero_pages): the bytes
// clear_free_pages leaves are the same with it as without it, and the pages it says are zero
// are, whatever the run after the resume allocated, wrote, split and freed.
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "sandbox/guest/arena.hpp"

using sojourn::Result;
using sojourn::sandbox::guest::FixedArena;

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kBytes = 8u << 20;

struct Block {
  std::byte* at;
  std::size_t size;
};

bool zero_page(const std::byte* page) {
  for (std::size_t i = 0; i < kPage; ++i) {
    if (page[i] != std::byte{0}) return false;
  }
  return true;
}

// Random allocations (small, banded and large), fills (some all zero, as a live block may
// be), reallocations and frees; with `live` from an earlier phase, also writes into and
// frees some of those.
void churn(FixedArena& arena, std::mt19937& rng, std::vector<Block>& live, int steps) {
  std::uniform_int_distribution<int> pick(0, 99);
  const auto size_of = [&] {
    const int kind = pick(rng);
    if (kind < 60) return std::size_t{16} + static_cast<std::size_t>(rng() % 1000);
    if (kind < 90) return std::size_t{1000} + static_cast<std::size_t>(rng() % 30000);
    return std::size_t{33000} + static_cast<std::size_t>(rng() % 300000);
  };
  const auto fill = [&](std::byte* at, std::size_t n) {
    const int value = pick(rng) < 15 ? 0 : 1 + static_cast<int>(rng() % 255);
    std::memset(at, value, n);
  };
  for (int step = 0; step < steps; ++step) {
    const int what = pick(rng);
    if (what < 50 || live.empty()) {
      const std::size_t n = size_of();
      auto* at = static_cast<std::byte*>(arena.allocate(n));
      if (at == nullptr) continue;
      fill(at, n);
      live.push_back({at, n});
    } else if (what < 60) {
      Block& b = live[rng() % live.size()];
      fill(b.at, b.size);  // a live block written (from before the resume, too)
    } else if (what < 70) {
      Block& b = live[rng() % live.size()];
      const std::size_t n = pick(rng) < 50 ? b.size / 2 + 1 : b.size + size_of();
      auto* at = static_cast<std::byte*>(arena.reallocate(b.at, b.size, n));
      if (at == nullptr) continue;
      if (n > b.size) fill(at + b.size, n - b.size);
      b = {at, n};
    } else {
      const std::size_t i = rng() % live.size();
      arena.release(live[i].at, live[i].size);
      live[i] = live.back();
      live.pop_back();
    }
  }
}

}  // namespace

TEST_CASE("a restored arena's known-zero pages are never written at the stop, and the bytes come out the same") {
  void* region = std::aligned_alloc(kPage, kBytes);
  REQUIRE(region != nullptr);
  auto* base = static_cast<std::byte*>(region);
  std::memset(base, 0, kBytes);
  std::mt19937 rng(7);
  std::vector<Block> live;
  // The source's step: its heap, then the stop's clearing, then the image's page map.
  FixedArena source = FixedArena::over(region, kBytes);
  churn(source, rng, live, 4000);
  source.clear_free_pages();
  const std::size_t pages = (source.high_water() + kPage - 1) / kPage;
  std::vector<std::uint8_t> map((pages + 7) / 8, 0);
  std::vector<std::byte> kept(kBytes);
  std::memcpy(kept.data(), base, kBytes);
  std::size_t left_out = 0;
  for (std::size_t i = 0; i < pages; ++i) {
    if (!zero_page(base + i * kPage)) map[i / 8] = static_cast<std::uint8_t>(map[i / 8] | (1u << (i % 8)));
    else ++left_out;
  }
  REQUIRE(left_out > 20);
  // The same resumed run twice over the restored bytes: untracked, then tracked.
  std::vector<std::byte> untracked;
  for (const bool track : {false, true}) {
    std::memset(base, 0, kBytes);
    for (std::size_t i = 0; i < pages; ++i) {
      if ((map[i / 8] >> (i % 8)) & 1u) std::memcpy(base + i * kPage, kept.data() + i * kPage, kPage);
    }
    Result<FixedArena> adopted = FixedArena::adopt(region, kBytes);
    REQUIRE(adopted.ok());
    if (track) adopted->track_zero_pages(std::span<const std::uint8_t>(map), pages);
    std::mt19937 again(11);
    std::vector<Block> blocks;
    // Every block live at the stop written again, every other one then freed (its pages may
    // have been left out, all zero, and are not any more).
    for (std::size_t i = 0; i < live.size(); ++i) {
      std::memset(live[i].at, 0x5a, live[i].size);
      if (i % 2 == 0) adopted->release(live[i].at, live[i].size);
      else blocks.push_back(live[i]);
    }
    // Large free blocks split, the part handed out freed again (merged with the rest, whose
    // list node it held stays behind), and more of everything.
    for (int i = 0; i < 200; ++i) {
      const std::size_t n = 40000 + static_cast<std::size_t>(again() % 200000);
      void* at = adopted->allocate(n);
      if (at != nullptr && i % 3 != 0) adopted->release(at, n);
      else if (at != nullptr) blocks.push_back({static_cast<std::byte*>(at), n});
    }
    churn(*adopted, again, blocks, 400);
    adopted->clear_free_pages();
    const std::size_t used = (adopted->high_water() + kPage - 1) / kPage;
    if (!track) {
      for (std::size_t i = 0; i < used; ++i) CHECK_FALSE(adopted->known_zero(i));
      untracked.assign(base, base + kBytes);
      continue;
    }
    std::size_t known = 0;
    for (std::size_t i = 0; i < used; ++i) {
      if (!adopted->known_zero(i)) continue;
      ++known;
      CHECK_MESSAGE(zero_page(base + i * kPage), "page " << i << " is said zero");
    }
    MESSAGE(known << " of " << used << " pages known zero, " << left_out << " left out");
    CHECK(known > 0);  // the case has pages left out that stayed free
    CHECK(std::memcmp(untracked.data(), base, kBytes) == 0);
    // A new arena over the region ends the tracking.
    FixedArena fresh = FixedArena::over(region, kBytes);
    CHECK_FALSE(fresh.known_zero(used > 0 ? used - 1 : 0));
  }
  std::free(region);
}

TEST_CASE("a list node written into a restored arena's zero page makes it forgotten (a large free block split)") {
  void* region = std::aligned_alloc(kPage, kBytes);
  REQUIRE(region != nullptr);
  auto* base = static_cast<std::byte*>(region);
  std::memset(base, 0, kBytes);
  FixedArena source = FixedArena::over(region, kBytes);
  // A filler up to a page boundary, then 64 pages freed between live blocks: one large free
  // block starting on a page, all zero after the stop's clearing (left out of the image).
  auto* first = static_cast<std::byte*>(source.allocate(16));
  REQUIRE(first != nullptr);
  const std::size_t to_page = (kPage - reinterpret_cast<std::uintptr_t>(first + 16) % kPage) % kPage;
  if (to_page != 0) REQUIRE(source.allocate(to_page) != nullptr);
  auto* big = static_cast<std::byte*>(source.allocate(64 * kPage));
  REQUIRE(big != nullptr);
  REQUIRE(reinterpret_cast<std::uintptr_t>(big) % kPage == 0);
  std::memset(big, 0x33, 64 * kPage);
  auto* guard = static_cast<std::byte*>(source.allocate(64));
  REQUIRE(guard != nullptr);
  std::memset(guard, 0x44, 64);
  source.release(big, 64 * kPage);
  source.clear_free_pages();
  const std::size_t pages = (source.high_water() + kPage - 1) / kPage;
  std::vector<std::uint8_t> map((pages + 7) / 8, 0);
  std::vector<std::byte> kept(base, base + kBytes);
  for (std::size_t i = 0; i < pages; ++i) {
    if (!zero_page(base + i * kPage)) map[i / 8] = static_cast<std::uint8_t>(map[i / 8] | (1u << (i % 8)));
  }
  std::vector<std::byte> untracked;
  for (const bool track : {false, true}) {
    std::memset(base, 0, kBytes);
    std::memcpy(base, kept.data(), pages * kPage);  // zero where the map leaves pages out
    Result<FixedArena> adopted = FixedArena::adopt(region, kBytes);
    REQUIRE(adopted.ok());
    if (track) adopted->track_zero_pages(std::span<const std::uint8_t>(map), pages);
    // 16 pages from the start of the free block: its rest's node goes on a page boundary, in
    // a page left out; freed again, the block absorbs the rest and that node stays behind.
    void* part = adopted->allocate(16 * kPage);
    REQUIRE(part == big);
    adopted->release(part, 16 * kPage);
    adopted->clear_free_pages();
    if (!track) {
      untracked.assign(base, base + kBytes);
      continue;
    }
    CHECK(adopted->known_zero(static_cast<std::size_t>((big - base) / kPage) + 30));
    CHECK_FALSE(adopted->known_zero(static_cast<std::size_t>((big - base) / kPage) + 16));
    CHECK(std::memcmp(untracked.data(), base, kBytes) == 0);
  }
  std::free(region);
}
