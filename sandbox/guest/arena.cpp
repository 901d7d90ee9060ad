// The fixed-address arena allocator. Its bookkeeping (top, free lists) lives in a header at
// the start of the region, so the region is self-contained. Sizes come back on release
// (LuaJIT passes them), so blocks carry no header of their own.
#include "sandbox/guest/arena.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <new>
#include <string>

#include "sandbox/guest/zero_pages.hpp"

namespace sojourn::sandbox::guest {

namespace {

constexpr std::size_t kAlign = 16;
constexpr std::size_t kSmallLists = kSmallLimit / kAlign;
constexpr std::size_t kPage = 4096;
constexpr std::size_t kPopulatedHeadBytes = 64 * 1024;  // what a fresh Lua state writes, rounded up

// Blocks up to these sizes are carved from chunks of their band's own (a chunk is taken
// whole from the free lists or the top), so that blocks of different sizes do not share
// pages: the short-lived small blocks a program makes while it builds its long-lived data
// (the pieces of a string, the temporary tables) fill chunks of their own, and once a
// collection frees them those chunks' pages are whole free pages, zero after
// clear_free_pages, which a heap image leaves out. Larger blocks come from the top.
constexpr std::size_t kBandLimit[] = {64, 256, 1024, 4096};
constexpr std::size_t kBands = std::size(kBandLimit);
// A band's first chunks are small (a small agent's guest touches few pages), then they
// double up to the largest (fewer chunk edges, where a page is shared with other blocks).
constexpr std::size_t kChunkMin = 4096;
constexpr std::uint32_t kChunkDoublings = 4;  // up to 64 KiB
// Chunks start once the top has passed this far from the first block: a small agent's heap
// (a warm guest's, a crowd's) packs as tightly as one top allows and its guest touches no
// more pages; a heap that grows past it, the kind a strong hop carries, is segregated.
constexpr std::size_t kChunksFrom = 128 * 1024;

std::size_t rounded(std::size_t size) { return size == 0 ? kAlign : (size + kAlign - 1) & ~(kAlign - 1); }

struct SmallFree {
  SmallFree* next;
};
// A free block larger than kSmallLimit, in a list sorted by address.
struct LargeFree {
  std::size_t size;
  LargeFree* next;
};

}  // namespace

struct FixedArena::Header {
  std::uint64_t magic;
  std::byte* start;  // first block
  std::byte* top;    // first byte never handed out, or handed back at the top
  std::byte* end;
  SmallFree* small[kSmallLists];
  LargeFree* large;
  // Each band's current chunk: [chunk_next, chunk_end) not yet handed out, both null when
  // there is none (never an empty chunk, so the top never falls below a chunk's end).
  std::byte* chunk_next[kBands];
  std::byte* chunk_end[kBands];
  std::uint32_t chunks_taken[kBands];  // how large the band's next chunk is
};

namespace {

constexpr std::uint64_t kMagic = 0x534f4a4f55524e41;  // "SOJOURNA"

std::byte* as_bytes(void* p) { return static_cast<std::byte*>(p); }

void push_small(FixedArena::Header& h, std::byte* block, std::size_t size) {
  zero_pages().forget(block, sizeof(SmallFree));
  // SAFETY: block is a free block of `size` >= 16 bytes inside the region, 16-byte aligned.
  auto* node = new (block) SmallFree{h.small[size / kAlign - 1]};
  h.small[size / kAlign - 1] = node;
}

// Lowers the top over free blocks that end at it.
void settle_top(FixedArena::Header& h) {
  for (;;) {
    LargeFree** link = &h.large;
    while (*link != nullptr && (*link)->next != nullptr) link = &(*link)->next;
    LargeFree* last = *link;
    if (last == nullptr || as_bytes(last) + last->size != h.top) return;
    h.top = as_bytes(last);
    *link = nullptr;
  }
}

void insert_large(FixedArena::Header& h, std::byte* block, std::size_t size) {
  LargeFree* prev = nullptr;
  LargeFree* next = h.large;
  while (next != nullptr && as_bytes(next) < block) prev = next, next = next->next;
  zero_pages().forget(block, sizeof(LargeFree));
  // SAFETY: block is free, inside the region, aligned, and at least kSmallLimit bytes.
  auto* node = new (block) LargeFree{size, next};
  if (next != nullptr && block + size == as_bytes(next)) {
    node->size += next->size;
    node->next = next->next;
  }
  if (prev != nullptr && as_bytes(prev) + prev->size == block) {
    prev->size += node->size;
    prev->next = node->next;
  } else if (prev != nullptr) {
    prev->next = node;
  } else {
    h.large = node;
  }
}

void free_block(FixedArena::Header& h, std::byte* block, std::size_t size) {
  // Its bytes were the run's: anything may be there. (A block handed out is forgotten only
  // here: until it is freed it is in no free range, which is all clear_free_pages looks at.)
  zero_pages().forget(block, size);
  if (block + size == h.top) {
    h.top = block;
    settle_top(h);
  } else if (size <= kSmallLimit) {
    push_small(h, block, size);
  } else {
    insert_large(h, block, size);
  }
}

// The remainder of a split block goes back to the list of its size.
void give_back(FixedArena::Header& h, std::byte* rest, std::size_t size) {
  if (size == 0) return;
  if (size <= kSmallLimit) {
    push_small(h, rest, size);
  } else {
    insert_large(h, rest, size);
  }
}

// A block from the exact lists of sizes [want, limit], split to `want`.
std::byte* take_small(FixedArena::Header& h, std::size_t want, std::size_t limit) {
  limit = std::min(limit, kSmallLimit);
  for (std::size_t size = want; size <= limit; size += kAlign) {
    SmallFree*& head = h.small[size / kAlign - 1];
    if (head == nullptr) continue;
    auto* block = reinterpret_cast<std::byte*>(head);  // SAFETY: a free block of `size` bytes
    head = head->next;
    give_back(h, block + want, size - want);
    return block;
  }
  return nullptr;
}

// Sorts a list of free blocks by address (merge sort on the links: no memory needed).
LargeFree* sort_by_address(LargeFree* list) {
  if (list == nullptr || list->next == nullptr) return list;
  LargeFree* slow = list;
  for (LargeFree* fast = list->next; fast != nullptr && fast->next != nullptr; fast = fast->next->next) slow = slow->next;
  LargeFree* second = slow->next;
  slow->next = nullptr;
  LargeFree* a = sort_by_address(list);
  LargeFree* b = sort_by_address(second);
  LargeFree head{0, nullptr};
  LargeFree* tail = &head;
  while (a != nullptr && b != nullptr) {
    LargeFree*& smaller = a < b ? a : b;
    tail->next = smaller;
    tail = smaller;
    smaller = smaller->next;
  }
  tail->next = a != nullptr ? a : b;
  return head.next;
}

// When the top is exhausted: merges every pair of adjacent free blocks, whatever list
// holds them (the exact-size lists never coalesce on their own), and lowers the top over
// free blocks that end at it. O(n log n) in the free blocks, and only when memory runs out.
void drop_chunks(FixedArena::Header& h);

void coalesce_all(FixedArena::Header& h) {
  drop_chunks(h);
  LargeFree* all = h.large;
  for (std::size_t i = 0; i < kSmallLists; ++i) {
    for (SmallFree* node = h.small[i]; node != nullptr;) {
      SmallFree* next = node->next;
      zero_pages().forget(node, sizeof(LargeFree));
      // SAFETY: a free block of (i + 1) * 16 >= sizeof(LargeFree) bytes, reused as a node.
      all = new (node) LargeFree{(i + 1) * kAlign, all};
      node = next;
    }
    h.small[i] = nullptr;
  }
  h.large = nullptr;
  LargeFree** large_tail = &h.large;
  all = sort_by_address(all);
  while (all != nullptr) {
    LargeFree* block = all;
    all = all->next;
    while (all != nullptr && as_bytes(block) + block->size == as_bytes(all)) {
      block->size += all->size;
      all = all->next;
    }
    if (as_bytes(block) + block->size == h.top) {
      h.top = as_bytes(block);  // the last block: nothing after it
    } else if (block->size <= kSmallLimit) {
      push_small(h, as_bytes(block), block->size);
    } else {
      block->next = nullptr;  // blocks come in address order: appending keeps the list sorted
      *large_tail = block;
      large_tail = &block->next;
    }
  }
}

// First fit in the large list; the rest of the block stays free.
std::byte* take_large(FixedArena::Header& h, std::size_t size) {
  for (LargeFree** link = &h.large; *link != nullptr; link = &(*link)->next) {
    LargeFree* found = *link;
    if (found->size < size) continue;
    const std::size_t rest = found->size - size;
    LargeFree* next = found->next;
    std::byte* block = as_bytes(found);
    if (rest > kSmallLimit) {
      zero_pages().forget(block + size, sizeof(LargeFree));
      // SAFETY: the rest lies inside the found free block, aligned since both sizes are.
      *link = new (block + size) LargeFree{rest, next};
    } else {
      *link = next;
      if (rest != 0) push_small(h, block + size, rest);
    }
    return block;
  }
  return nullptr;
}

std::byte* take_top(FixedArena::Header& h, std::size_t size) {
  if (size > static_cast<std::size_t>(h.end - h.top)) return nullptr;
  std::byte* block = h.top;
  h.top += size;
  return block;
}

// A chunk from the top starting on a page (the bytes skipped go to the free lists), so that
// it shares no page with the blocks before it; its size is whole pages, so none with those after.
std::byte* take_top_aligned(FixedArena::Header& h, std::size_t size) {
  const auto top = reinterpret_cast<std::uintptr_t>(h.top);
  const std::size_t skip = ((top + kPage - 1) & ~(kPage - 1)) - top;
  if (skip + size > static_cast<std::size_t>(h.end - h.top)) return take_top(h, size);
  if (skip != 0) give_back(h, take_top(h, skip), skip);
  return take_top(h, size);
}

// Grows a block in place into the free block right after it, if there is one big enough.
bool grow_into_next(FixedArena::Header& h, std::byte* block, std::size_t old_size, std::size_t new_size) {
  std::byte* after = block + old_size;
  const std::size_t need = new_size - old_size;
  if (after == h.top) return take_top(h, need) != nullptr;
  for (LargeFree** link = &h.large; *link != nullptr; link = &(*link)->next) {
    if (as_bytes(*link) < after) continue;
    if (as_bytes(*link) != after || (*link)->size < need) return false;
    LargeFree* found = *link;
    const std::size_t rest = found->size - need;
    LargeFree* next = found->next;
    if (rest > kSmallLimit) {
      zero_pages().forget(after + need, sizeof(LargeFree));
      // SAFETY: inside the free block being split, aligned.
      *link = new (after + need) LargeFree{rest, next};
    } else {
      *link = next;
      if (rest != 0) push_small(h, after + need, rest);
    }
    return true;
  }
  return false;
}

}  // namespace


Result<FixedArena> FixedArena::map_at(std::uintptr_t base, std::size_t bytes) {
  bytes = (bytes + kPage - 1) & ~(kPage - 1);
  // SAFETY: a fresh mapping at an address nothing else uses (NOREPLACE refuses otherwise).
  void* at = ::mmap(reinterpret_cast<void*>(base), bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  if (at == MAP_FAILED) {
    return make_error(Errc::memory_limit, "memory limit: cannot map the Lua arena of " + std::to_string(bytes) +
                                              " bytes: " + std::strerror(errno));
  }
  if (reinterpret_cast<std::uintptr_t>(at) != base) {  // a kernel without MAP_FIXED_NOREPLACE
    ::munmap(at, bytes);
    return errors::internal("the Lua arena could not be placed at its fixed address");
  }
  // Transparent huge pages past the first kHugePagesFrom bytes (THP "madvise" mode grants them
  // only on request): a large restored heap's pages, written into a fresh guest by the host,
  // and a large heap growing, are faulted in 2 MB at a time instead of 4 KB. A heap that stays
  // below never touches that part, so a small guest's memory (the crowd of them a node holds)
  // stays 4 KB pages. A hint only: a kernel without THP, or the microVM's syscall table,
  // refuses it and the arena works as before.
  const std::uintptr_t huge_from = (base + kHugePagesFrom + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  if (huge_from < base + bytes) {
    // SAFETY: [huge_from, base + bytes) lies inside the mapping just made.
    ::madvise(reinterpret_cast<void*>(huge_from), base + bytes - huge_from, MADV_HUGEPAGE);
  }
  // Every Lua state's build writes the arena's first ~56 KiB (the header's free lists, then the
  // state, its libraries, the restricted environment): one call maps them, before `over`
  // writes the header, instead of ~15 zero-fill faults (~16 us each on a paravirtualised VM).
  // A hint: a kernel without MADV_POPULATE_WRITE, or the microVM (ENOSYS), faults them as before.
  // SAFETY: the range lies inside the mapping just made.
  (void)::madvise(at, std::min(kPopulatedHeadBytes, bytes), MADV_POPULATE_WRITE);
  return over(at, bytes);
}

FixedArena FixedArena::over(void* region, std::size_t bytes) {
  // SAFETY: the caller hands a writable region of `bytes` bytes, 16-byte aligned, larger
  // than the header; the header is built at its start and blocks follow it.
  if (zero_pages().covers(reinterpret_cast<std::uintptr_t>(region))) zero_pages().stop();
  auto* header = new (region) Header{};
  header->magic = kMagic;
  header->start = as_bytes(region) + rounded(sizeof(Header));
  header->top = header->start;
  header->end = as_bytes(region) + bytes;
  return FixedArena(header);
}

FixedArena FixedArena::over_zeroed(void* region, std::size_t bytes) {
  if (zero_pages().covers(reinterpret_cast<std::uintptr_t>(region))) zero_pages().stop();
  // SAFETY: as in `over`; every byte of the header is zero already (the caller's promise),
  // which is what value-initialising it would write (the header is an implicit-lifetime
  // aggregate of pointers and integers), so only the four fields that are not zero are set.
  auto* header = std::launder(static_cast<Header*>(region));
  header->magic = kMagic;
  header->start = as_bytes(region) + rounded(sizeof(Header));
  header->top = header->start;
  header->end = as_bytes(region) + bytes;
  return FixedArena(header);
}

Result<FixedArena> FixedArena::adopt(void* region, std::size_t bytes) {
  // SAFETY: the caller hands a writable region of `bytes` bytes holding an image's bytes; the
  // header is only read after the size check, and its pointers only compared.
  if (bytes < rounded(sizeof(Header))) {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: the arena is smaller than its bookkeeping");
  }
  auto* header = std::launder(static_cast<Header*>(region));
  std::byte* const lo = as_bytes(region);
  std::byte* const hi = lo + bytes;
  bool inside = header->start == lo + rounded(sizeof(Header)) && header->top >= header->start &&
                header->top <= hi && header->end == hi;
  for (std::size_t band = 0; inside && band < kBands; ++band) {
    const std::byte* next = header->chunk_next[band];
    const std::byte* end = header->chunk_end[band];
    inside = next == nullptr ? end == nullptr : next >= header->start && next < end && end <= header->top;
  }
  if (header->magic != kMagic || !inside) {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: the arena's bookkeeping is not an arena's");
  }
  return FixedArena(header);
}

namespace {

// The band a block size is carved in, or kBands for blocks taken from the top.
std::size_t band_of(std::size_t want) {
  std::size_t band = 0;
  while (band < kBands && want > kBandLimit[band]) ++band;
  return band;
}

// A block from the band's current chunk, taking a new chunk (first fit in the large list,
// else from the top) when the current one is too short; its rest goes to the free lists.
std::byte* take_chunk(FixedArena::Header& h, std::size_t band, std::size_t want) {
  if (h.chunk_next[band] == nullptr || static_cast<std::size_t>(h.chunk_end[band] - h.chunk_next[band]) < want) {
    const std::size_t bytes = kChunkMin << std::min(h.chunks_taken[band], kChunkDoublings);
    std::byte* chunk = take_large(h, bytes);
    if (chunk == nullptr) chunk = take_top_aligned(h, bytes);
    if (chunk == nullptr) return nullptr;
    if (h.chunk_next[band] != nullptr) give_back(h, h.chunk_next[band], static_cast<std::size_t>(h.chunk_end[band] - h.chunk_next[band]));
    h.chunk_next[band] = chunk;
    h.chunk_end[band] = chunk + bytes;
    ++h.chunks_taken[band];
  }
  std::byte* block = h.chunk_next[band];
  h.chunk_next[band] += want;
  if (h.chunk_next[band] == h.chunk_end[band]) h.chunk_next[band] = h.chunk_end[band] = nullptr;
  return block;
}

// Hands every band's unused chunk rest back to the free lists (before coalescing).
void drop_chunks(FixedArena::Header& h) {
  for (std::size_t band = 0; band < kBands; ++band) {
    if (h.chunk_next[band] == nullptr) continue;
    give_back(h, h.chunk_next[band], static_cast<std::size_t>(h.chunk_end[band] - h.chunk_next[band]));
    h.chunk_next[band] = h.chunk_end[band] = nullptr;
  }
}

// One pass of the allocation policy; null when nothing fits as the lists stand.
std::byte* take(FixedArena::Header& h, std::size_t want) {
  if (want > kSmallLimit) {
    if (std::byte* block = take_large(h, want)) return block;
    return take_top(h, want);
  }
  // The same size, or a little larger (an eighth), before growing the band's chunk or the top.
  if (std::byte* block = take_small(h, want, want + (want / 8 & ~(kAlign - 1)))) return block;
  if (const std::size_t band = band_of(want); band < kBands && static_cast<std::size_t>(h.top - h.start) >= kChunksFrom) {
    if (std::byte* block = take_chunk(h, band, want)) return block;
  }
  if (std::byte* block = take_top(h, want)) return block;
  if (std::byte* block = take_small(h, want, kSmallLimit)) return block;
  return take_large(h, want);
}

}  // namespace

void* FixedArena::allocate(std::size_t size) noexcept {
  Header& h = *header_;
  if (size > static_cast<std::size_t>(h.end - h.start)) return nullptr;
  const std::size_t want = rounded(size);
  std::byte* block = take(h, want);
  if (block == nullptr) {
    coalesce_all(h);
    block = take(h, want);
  }
  note_top();
  return block;
}

void FixedArena::note_top() noexcept {
  if (header_->top > peak_) peak_ = header_->top;
}

void* FixedArena::reallocate(void* block, std::size_t old_size, std::size_t new_size) noexcept {
  if (block == nullptr) return allocate(new_size);
  Header& h = *header_;
  const std::size_t had = rounded(old_size);
  const std::size_t want = rounded(new_size);
  if (want == had) return block;
  if (want < had) {
    free_block(h, as_bytes(block) + want, had - want);
    return block;
  }
  if (grow_into_next(h, as_bytes(block), had, want)) {
    note_top();
    return block;
  }
  void* moved = allocate(new_size);
  if (moved == nullptr) return nullptr;
  // SAFETY: both blocks hold at least old_size bytes and are distinct live blocks.
  std::memcpy(moved, block, old_size);
  free_block(h, as_bytes(block), had);
  return moved;
}

void FixedArena::release(void* block, std::size_t size) noexcept {
  if (block != nullptr) free_block(*header_, as_bytes(block), rounded(size));
}

std::uintptr_t FixedArena::base() const noexcept {
  // SAFETY: an address read as an integer, not dereferenced.
  return reinterpret_cast<std::uintptr_t>(header_);
}
std::size_t FixedArena::size() const noexcept { return static_cast<std::size_t>(header_->end - as_bytes(header_)); }
std::size_t FixedArena::high_water() const noexcept {
  return static_cast<std::size_t>(header_->top - as_bytes(header_));
}
std::size_t FixedArena::peak() const noexcept {
  const std::byte* highest = std::max<const std::byte*>(peak_, header_->top);
  return static_cast<std::size_t>(highest - as_bytes(header_));
}

void FixedArena::reset() noexcept {
  const std::size_t bytes = size();
  const std::size_t written = peak();
  // SAFETY: [base, base + written) lies inside the mapped region (the top never passes its
  // end); no block is live, so nothing points into it any more.
  std::memset(static_cast<void*>(header_), 0, written);
  *this = over(static_cast<void*>(header_), bytes);
}

std::size_t FixedArena::restore(const std::byte* image, std::size_t bytes) noexcept {
  if (zero_pages().covers(base())) zero_pages().stop();
  const std::size_t written = peak();
  auto* base = as_bytes(static_cast<void*>(header_));
  // SAFETY: the image came from this region's first `bytes` bytes (bytes <= its size), and
  // [bytes, written) lies inside the region (the top never passes its end). The header is
  // part of the image: the bookkeeping comes back with the blocks it describes.
  std::memcpy(base, image, bytes);
  if (written > bytes) std::memset(base + bytes, 0, written - bytes);
  peak_ = header_->top;
  return std::max(written, bytes);
}

namespace {

// Zeroes [from, to), a free range, skipping the pages `zero` still knows zero (the tracker
// of this arena, or null); each whole page it skips is set in `free_zero`.
void clear_range(std::byte* from, std::byte* to, std::uintptr_t base, const ZeroPages* zero,
                 std::vector<std::uint64_t>& free_zero) {
  if (zero == nullptr) {
    // SAFETY: [from, to) lies inside a free block (or above the top), so inside the region, and
    // nothing live points into it.
    std::memset(from, 0, static_cast<std::size_t>(to - from));
    return;
  }
  while (from < to) {
    const auto at = reinterpret_cast<std::uintptr_t>(from);
    const std::size_t page = (at - base) / kPage;
    std::byte* const page_end = std::min(to, from + (kPage - (at - base) % kPage));
    if (!zero->zero(page)) {
      std::memset(from, 0, static_cast<std::size_t>(page_end - from));  // SAFETY: as above
    } else if ((at - base) % kPage == 0 && page_end - from == static_cast<std::ptrdiff_t>(kPage)) {
      set_bit(free_zero, page);
    }
    from = page_end;
  }
}

// Zeroes a free block past its list node; returns the bytes of whole pages that became zero.
std::size_t clear_block(std::byte* block, std::size_t size, std::uintptr_t base, const ZeroPages* zero,
                        std::vector<std::uint64_t>& free_zero) {
  if (size <= sizeof(LargeFree)) return 0;
  clear_range(block + sizeof(LargeFree), block + size, base, zero, free_zero);
  const auto from = (reinterpret_cast<std::uintptr_t>(block) + sizeof(LargeFree) + kPage - 1) & ~(kPage - 1);
  const auto to = (reinterpret_cast<std::uintptr_t>(block) + size) & ~(kPage - 1);
  return to > from ? to - from : 0;
}

}  // namespace

std::size_t FixedArena::clear_free_pages() noexcept {
  Header& h = *header_;
  coalesce_all(h);
  ZeroPages& tracker = zero_pages();
  // The free pages found zero without being written: what the tracker keeps after (the other
  // pages it knew may be inside live blocks, whose bytes it does not follow).
  std::vector<std::uint64_t> free_zero = tracker.covers(base()) ? tracker.blank() : std::vector<std::uint64_t>{};
  const ZeroPages* zero = free_zero.empty() ? nullptr : &tracker;
  const std::uintptr_t at = base();
  std::size_t cleared = 0;
  for (std::size_t i = 0; i < kSmallLists; ++i) {
    for (SmallFree* node = h.small[i]; node != nullptr; node = node->next) {
      cleared += clear_block(as_bytes(node), (i + 1) * kAlign, at, zero, free_zero);
    }
  }
  for (LargeFree* node = h.large; node != nullptr; node = node->next) cleared += clear_block(as_bytes(node), node->size, at, zero, free_zero);
  // Above the top: what was handed out and came back (the span ends at the top's page, whose
  // tail may hold old bytes).
  const auto top = reinterpret_cast<std::uintptr_t>(h.top);
  const auto page_end = (top + kPage - 1) & ~(kPage - 1);
  const auto end = reinterpret_cast<std::uintptr_t>(h.end);
  // SAFETY: [top, min(page_end, end)) lies inside the region, above every live block.
  if (page_end > top) clear_range(h.top, h.top + (std::min(page_end, end) - top), at, zero, free_zero);
  if (zero != nullptr) tracker.intersect(free_zero);
  else if (tracker.covers(at)) tracker.stop();  // no memory for the bitmap: every page was written
  return cleared;
}

void FixedArena::track_zero_pages(std::span<const std::uint8_t> page_map, std::size_t pages) noexcept {
  ZeroPages& tracker = zero_pages();
  if (!tracker.start(base(), size() / kPage)) return;
  // The bookkeeping's pages are written in place (the list heads): never remembered.
  tracker.forget(header_, static_cast<std::size_t>(header_->start - as_bytes(header_)));
  for (std::size_t i = 0; i < pages && i / 8 < page_map.size(); ++i) {
    if (((page_map[i / 8] >> (i % 8)) & 1u) != 0) tracker.forget_page(i);
  }
}

bool FixedArena::known_zero(std::size_t page) const noexcept {
  const ZeroPages& tracker = zero_pages();
  return tracker.covers(base()) && tracker.zero(page);
}

bool FixedArena::contains(const void* block) const noexcept {
  const auto* p = static_cast<const std::byte*>(block);
  return p >= header_->start && p < header_->end;
}

}  // namespace sojourn::sandbox::guest
