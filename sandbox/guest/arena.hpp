// The guest's Lua heap: one region at a fixed virtual address, sized by the run's memory
// quota, holding every Lua allocation of the run and the allocator's own bookkeeping, so
// that the region alone is the Lua heap (what strong mobility will checkpoint and map back
// at the same address in another guest).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "sandbox/lua/lua_heap.hpp"
#include "sojourn/core/error.hpp"

namespace sojourn::sandbox::guest {

// Above everything a static non-PIE x86-64 executable maps (image at 0x400000, brk after
// it, mmap and the stack near 0x7fff'xxxx'xxxx), and inside the 47-bit user half.
inline constexpr std::uintptr_t kArenaBase = 0x1000'0000'0000;
// Blocks up to this size are kept in exact-size free lists (16-byte steps); larger ones in
// one address-ordered list where neighbours coalesce.
inline constexpr std::size_t kSmallLimit = 32 * 1024;
// map_at asks for transparent huge pages on the region past this offset (rounded up to a huge
// page): a heap that stays below it keeps 4 KB pages (a small guest pays no 2 MB piece), one
// that grows past it, or a large image restored into it, is faulted in 2 MB at a time.
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;
inline constexpr std::size_t kHugePagesFrom = std::size_t{8} << 20;

// The region's size for a memory quota: the quota, the same again for fragmentation
// (LuaJIT doubles its strings and tables as they grow), and room for the bookkeeping. Inline:
// the host checks a heap image's arena against it (strong mobility).
inline std::size_t arena_bytes_for_quota(std::uint64_t quota_bytes) {
  constexpr std::uint64_t kPageBytes = 4096;
  const std::uint64_t bytes = quota_bytes * 2 + (std::uint64_t{1} << 20);
  return static_cast<std::size_t>((bytes + kPageBytes - 1) & ~(kPageBytes - 1));
}

// A segregated-fit allocator: exact-size free lists for blocks up to 32 KiB (a request
// takes its own size, else a free block up to 1/8 larger, split), an address-ordered
// first-fit list with coalescing for larger ones, and a top pointer that grows into the
// unused rest of the region and shrinks back when its last block is freed. When the top
// is exhausted any free block large enough is split. Once the heap is past its first
// 128 KiB, new blocks up to 4 KiB are carved from page-aligned chunks of their size band
// (64, 256, 1,024, 4,096 bytes), so that short-lived small blocks and the long-lived data
// built between them do not share pages: freed together, they leave whole pages that
// clear_free_pages zeroes and a heap image leaves out.
class FixedArena final : public LuaHeap {
 public:
  // Maps `bytes` (rounded up to whole pages) at `base` with MAP_FIXED_NOREPLACE: fails if
  // anything is already there. The mapping is private, anonymous, never executable, and
  // lazily backed (pages are faulted in as the heap grows; huge pages past kHugePagesFrom).
  static Result<FixedArena> map_at(std::uintptr_t base, std::size_t bytes);
  // Uses an existing writable region (tests); the first bytes become the bookkeeping.
  static FixedArena over(void* region, std::size_t bytes);
  // As `over`, for a region known to hold only zero bytes (anonymous memory never written):
  // only the bookkeeping's non-zero fields are written, so that each of its pages is mapped
  // only when a list head on it is first used (a forked guest's fresh C++ heap, guest_heap.cpp).
  static FixedArena over_zeroed(void* region, std::size_t bytes);
  // Takes over a region whose bytes came from a heap image (strong mobility): the bookkeeping
  // already at its start is kept, after checking that it is an arena's and that its pointers
  // stay inside the region (sandbox_refused "refused by the sandbox: heap image: ..."). The free
  // lists are not walked: a crafted image can at worst crash its own guest.
  static Result<FixedArena> adopt(void* region, std::size_t bytes);

  void* allocate(std::size_t size) noexcept override;
  void* reallocate(void* block, std::size_t old_size, std::size_t new_size) noexcept override;
  void release(void* block, std::size_t size) noexcept override;

  std::uintptr_t base() const noexcept;
  std::size_t size() const noexcept;
  // Bytes between the region's start and its top: what a checkpoint would have to copy.
  std::size_t high_water() const noexcept;
  bool contains(const void* block) const noexcept;
  // Before the arena is imaged (strong mobility): merges adjacent free blocks (lowering the
  // top over those that end at it) and zeroes every free block past the list node at its
  // start, so that freed memory travels as all-zero pages, which an image leaves out (and the
  // pages it shares with live data compress better). Live blocks and the bookkeeping are
  // untouched. Returns the bytes of whole pages that became zero.
  std::size_t clear_free_pages() noexcept;
  // After a strong resume wrote an image's kept pages into this arena, every other page being
  // zero: remembers as zero the pages `page_map` leaves out (bit i clear for page i of its
  // first `pages`) and every page past them, the bookkeeping's excepted. A page is forgotten
  // as soon as the allocator takes back a block over any byte of it or writes a list node
  // into it (a block handed out and still live lies in no free range). clear_free_pages then
  // writes no free page still remembered (in a restored arena those pages are not even
  // mapped: zeroing them would fault each in for nothing), and afterwards known_zero(i) says
  // page i lies inside a free block and is zero without being read. The
  // bytes are the same as without it. Kept outside the region (a heap image never carries
  // it); one arena at a time; map_at/over/reset/restore of the region end it. Without memory
  // for its bitmap (one bit a page) nothing is remembered.
  void track_zero_pages(std::span<const std::uint8_t> page_map, std::size_t pages) noexcept;
  bool known_zero(std::size_t page) const noexcept;
  // Back to the arena a fresh map_at gives, for a warm guest's next run (docs/jails.md,
  // "Warm guests"): every byte up to the highest top any allocation reached is zeroed (the
  // pages stay mapped, so the next run faults none in) and the bookkeeping is rebuilt. Only
  // when no block is live (the run's lua_State is closed).
  void reset() noexcept;
  // The highest top since the arena was made or reset: how much a reset zeroes.
  std::size_t peak() const noexcept;
  // Back to the arena as it was when `image` was copied from it (its first high_water()
  // bytes, a warm guest's prepared state: docs/jails.md "Warm guests"): the image's bytes
  // over the start, zero from its end up to the highest top reached since (the pages stay
  // mapped). Whatever was live then is live again, at the same addresses, and nothing
  // allocated since is left. `image` must have come from this arena.
  // Returns the bytes it wrote.
  std::size_t restore(const std::byte* image, std::size_t bytes) noexcept;

  struct Header;

 private:
  explicit FixedArena(Header* header) : header_(header) {}
  void note_top() noexcept;
  Header* header_;
  std::byte* peak_ = nullptr;  // outside the region: a heap image never carries it
};

}  // namespace sojourn::sandbox::guest
