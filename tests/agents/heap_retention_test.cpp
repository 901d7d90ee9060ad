// A node keeps the memory of its large messages (agents/heap_retention.cpp): a block of a
// few MB comes from malloc's arenas, not from a mapping of its own, and freeing it does not
// hand it back to the kernel, so the next hop's buffers are not faulted in again.
#include <doctest/doctest.h>

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "agents/heap_retention.hpp"
#include "sojourn/agents/node.hpp"

using namespace sojourn;

namespace {

bool user_set_thresholds() {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr) return true;
  const char* t = std::getenv("GLIBC_TUNABLES");
  return t != nullptr && (std::strstr(t, "mmap_threshold") != nullptr || std::strstr(t, "trim_threshold") != nullptr);
}

}  // namespace

TEST_CASE("a node keeps a freed 16 MB block in its heap for the next one") {
#if defined(__SANITIZE_ADDRESS__)
  MESSAGE("AddressSanitizer replaces malloc: glibc's thresholds do not apply");
#else
  { Node node(NodeOptions{.name = "heap"}); }
  const bool set = retain_freed_heap_memory();  // the node's call already happened: the same answer
  if (user_set_thresholds()) {
    CHECK_FALSE(set);
    return;
  }
  REQUIRE(set);
  // glibc's own dynamic threshold stays below 16 MB unless a block that large was mapped and
  // freed before; this process never did, so a mapped block here means the node set nothing.
  constexpr std::size_t kBlock = 16u << 20;
  const struct mallinfo2 before = mallinfo2();
  void* block = std::malloc(kBlock);
  REQUIRE(block != nullptr);
  std::memset(block, 1, kBlock);  // touched: the pages are resident
  const struct mallinfo2 held = mallinfo2();
  CHECK(held.hblks == before.hblks);      // no mapping of its own
  CHECK(held.hblkhd == before.hblkhd);
  std::free(block);
  const struct mallinfo2 after = mallinfo2();
  CHECK(after.arena == held.arena);                // not trimmed back to the kernel
  CHECK(after.fordblks >= held.fordblks + kBlock);  // free, and kept for the next block
#endif
}

TEST_CASE("a node's threads share one malloc arena unless the user chose a number") {
#if defined(__SANITIZE_ADDRESS__) || !defined(__GLIBC__)
  MESSAGE("not glibc's malloc: its arenas do not apply");
#else
  { Node node(NodeOptions{.name = "arenas"}); }
  const char* t = std::getenv("GLIBC_TUNABLES");
  if (std::getenv("MALLOC_ARENA_MAX") != nullptr || (t != nullptr && std::strstr(t, "arena_max") != nullptr)) return;
  // A block of a thread started now: with an arena per thread it comes from that thread's
  // arena, which glibc marks in the block's size word (NON_MAIN_ARENA, bit 2); with one arena
  // it comes from the main arena.
  constexpr std::size_t kBlock = 1u << 20;  // a hop's state: below the raised mmap threshold
  std::size_t size_word = 0;
  std::thread other([&] {
    void* block = std::malloc(kBlock);
    if (block == nullptr) return;
    std::memcpy(&size_word, static_cast<const char*>(block) - sizeof(std::size_t), sizeof(size_word));
    std::free(block);
  });
  other.join();
  REQUIRE(size_word >= kBlock);        // the block's header was read
  CHECK((size_word & 0x2) == 0);       // not mapped on its own (IS_MMAPPED)
  CHECK((size_word & 0x4) == 0);       // from the main arena (NON_MAIN_ARENA clear)
#endif
}
