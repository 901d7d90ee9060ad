// Tests of the guest's fixed-address arena allocator and of the channel protocol's codec.
#include <doctest/doctest.h>

#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include <lua.hpp>

#include "bench/heap_fill.hpp"
#include "sandbox/guest/arena.hpp"
#include "sandbox/process/guest_wire.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace {

using sojourn::sandbox::guest::FixedArena;
using sojourn::sandbox::guest::kArenaBase;
namespace channel = sojourn::sandbox::channel;

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

}  // namespace

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

TEST_CASE("channel messages round-trip through their frames") {
  channel::RunRequest request;
  request.source = "return ...";
  request.chunk_name = "job";
  request.args = sojourn::Value::array({1, "two", 3.5});
  request.limits = sojourn::Limits{1, 2, 3};
  request.allow_jit = true;
  const auto frame = channel::encode_frame(request);
  const auto header = channel::parse_header(std::span<const std::uint8_t, channel::kHeaderBytes>(frame.data(), 5));
  CHECK(header.kind == channel::Kind::run);
  CHECK(header.length == frame.size() - channel::kHeaderBytes);
  auto back = channel::decode_payload<channel::RunRequest>(std::span(frame).subspan(channel::kHeaderBytes));
  REQUIRE(back.ok());
  CHECK(back->source == "return ...");
  CHECK(back->chunk_name == "job");
  CHECK(back->args.get(2).as_string() == "two");
  CHECK(back->limits == sojourn::Limits{1, 2, 3});
  CHECK(back->allow_jit);
}

TEST_CASE("a truncated or padded payload is refused with a message naming the message kind") {
  channel::HostCall call{"kv.get", sojourn::Value::array({"k"})};
  auto frame = channel::encode_frame(call);
  auto payload = std::span(frame).subspan(channel::kHeaderBytes);
  auto truncated = channel::decode_payload<channel::HostCall>(payload.first(payload.size() - 1));
  REQUIRE_FALSE(truncated.ok());
  CHECK(truncated.error().message.rfind("internal error: guest channel: bad host_call message: ", 0) == 0);
  frame.push_back(0);
  auto padded = channel::decode_payload<channel::HostCall>(std::span(frame).subspan(channel::kHeaderBytes));
  REQUIRE_FALSE(padded.ok());
  CHECK(padded.error().message == "internal error: guest channel: bad host_call message: trailing bytes");
}

TEST_CASE("the SIGSYS handler's frame decodes as a seccomp report") {
  const auto frame = channel::seccomp_report_frame(41);
  CHECK(frame[4] == static_cast<std::uint8_t>(channel::Kind::seccomp_report));
  auto report = channel::decode_payload<channel::SeccompReport>(std::span(frame).subspan(channel::kHeaderBytes));
  REQUIRE(report.ok());
  CHECK(report->syscall == 41);
}

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
