// Tests of the guest's arena under Lua: every allocation of a run comes from it, and the pages
// a heap image keeps after clear_free_pages are about the live bytes.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include <lua.hpp>

#include "bench/heap_fill.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

#include "sandbox/guest/arena.hpp"
#include "tests/process/arena_region.hpp"

using arena_test::Region;
using sojourn::sandbox::guest::FixedArena;

namespace {

// Counts what a run asks of the heap and checks every block lies in the arena.
class CheckedHeap final : public sojourn::sandbox::LuaHeap {
 public:
  explicit CheckedHeap(FixedArena& arena) : arena_(arena) {}
  void* allocate(std::size_t size) noexcept override { return note(arena_.allocate(size)); }
  void* reallocate(void* block, std::size_t old_size, std::size_t new_size) noexcept override {
    return note(arena_.reallocate(block, old_size, new_size));
  }
  void release(void* block, std::size_t size) noexcept override {
    outside += block != nullptr && !arena_.contains(block) ? 1 : 0;
    arena_.release(block, size);
  }
  int calls = 0;
  int outside = 0;

 private:
  void* note(void* block) {
    ++calls;
    outside += block != nullptr && !arena_.contains(block) ? 1 : 0;
    return block;
  }
  FixedArena& arena_;
};

}  // namespace

TEST_CASE("with the arena installed, every Lua allocation of a run comes from it") {
  Region region(32u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  CheckedHeap heap(arena);
  sojourn::sandbox::use_lua_heap(&heap);
  sojourn::sandbox::RunInput input;
  input.source = "local t = {} for i = 1, 20000 do t[i] = {i, tostring(i)} end "
                 "local s = ('x'):rep(100000) return #t, #(s .. s)";
  input.limits = sojourn::Limits{100'000'000, 16u << 20, 5000};
  auto r = sojourn::sandbox::run_lua(input, nullptr);
  sojourn::sandbox::use_lua_heap(nullptr);
  REQUIRE(r.ok());
  CHECK(r->get(2).as_integer() == 200000);
  CHECK(heap.calls > 20000);
  CHECK(heap.outside == 0);
  CHECK(arena.high_water() > (1u << 20));
}

namespace {

void* arena_lua_alloc(void* ud, void* block, std::size_t old_size, std::size_t new_size) {
  auto& arena = *static_cast<FixedArena*>(ud);
  if (new_size == 0) {
    arena.release(block, old_size);
    return nullptr;
  }
  return block == nullptr ? arena.allocate(new_size) : arena.reallocate(block, old_size, new_size);
}

// Pages below the top holding any non-zero byte: what a heap image keeps.
std::size_t kept_pages(void* base, const FixedArena& arena) {
  std::size_t kept = 0;
  const auto* bytes = static_cast<const unsigned char*>(base);
  for (std::size_t page = 0; page < arena.high_water(); page += 4096) {
    const std::size_t length = std::min<std::size_t>(4096, arena.high_water() - page);
    for (std::size_t i = 0; i < length; ++i) {
      if (bytes[page + i] != 0) {
        ++kept;
        break;
      }
    }
  }
  return kept;
}

}  // namespace

TEST_CASE("an agent's long-lived strings do not share pages with the garbage made building them") {
  // bench/heap_fill.hpp's data (1,000-byte strings, each built from 125 short ones): after a
  // full collection and clear_free_pages, the pages an image keeps are about the live bytes.
  for (int kb : {1000, 4000}) {
    Region region(64u << 20);
    FixedArena arena = FixedArena::over(region.aligned(), region.size);
    lua_State* L = lua_newstate(arena_lua_alloc, &arena);
    REQUIRE(L != nullptr);
    luaL_openlibs(L);
    const std::string source = std::string(sojourn::bench::kFillLua) + "blob = fill(" + std::to_string(kb) + ")";
    REQUIRE(luaL_dostring(L, source.c_str()) == 0);
    lua_gc(L, LUA_GCCOLLECT, 0);
    arena.clear_free_pages();
    const std::size_t kept = kept_pages(region.aligned(), arena);
    // Live: kb strings of 1,040 arena bytes, the table holding them, LuaJIT's string table and
    // libraries. Before the chunks (small blocks carved from the top between the strings) the
    // image kept about twice the strings' bytes; now about 1.3 times.
    const std::size_t strings = static_cast<std::size_t>(kb) * 1040;
    MESSAGE("kb=" << kb << " span=" << arena.high_water() << " kept_pages=" << kept);
    CHECK(kept * 4096 < strings * 14 / 10);
    lua_close(L);
  }
}

TEST_CASE("small blocks freed together leave whole zero pages after clear_free_pages, even among large ones") {
  Region region(16u << 20);
  FixedArena arena = FixedArena::over(region.aligned(), region.size);
  std::vector<std::byte*> small, large;
  // Interleaved as a program building strings makes them: many short-lived small blocks,
  // then one long-lived larger block.
  for (int i = 0; i < 2000; ++i) {
    for (int j = 0; j < 60; ++j) {
      auto* block = static_cast<std::byte*>(arena.allocate(33));
      REQUIRE(block != nullptr);
      std::memset(block, 0xab, 33);
      small.push_back(block);
    }
    auto* block = static_cast<std::byte*>(arena.allocate(1030));
    REQUIRE(block != nullptr);
    std::memset(block, 0xcd, 1030);
    large.push_back(block);
  }
  for (std::byte* block : small) arena.release(block, 33);
  arena.clear_free_pages();
  const std::size_t kept = kept_pages(region.aligned(), arena);
  const std::size_t large_pages = (2000 * 1040 + 4095) / 4096;
  MESSAGE("kept " << kept << " pages for " << large_pages << " pages of large blocks");
  CHECK(kept < large_pages + large_pages / 8 + 4);
  for (std::byte* block : large) {
    bool intact = true;
    for (int i = 0; i < 1030; ++i) intact = intact && block[i] == std::byte{0xcd};
    CHECK(intact);
  }
}
