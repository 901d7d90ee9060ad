// malloc, free, calloc, realloc and the aligned variants over FixedArena, for the static
// guest executables (glibc supports replacing its malloc in a static link when all of
// these are provided). Each block carries a 16-byte header with its arena size and the
// offset of the returned pointer, since free() does not pass a size. Single-threaded,
// like the guest and the zygote; a spin lock keeps it correct should that change.
#include "sandbox/guest/guest_heap.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>
#include <optional>

#include "sandbox/guest/arena.hpp"

namespace sojourn::sandbox::guest {

namespace {

constexpr std::size_t kHeader = 16;

struct BlockHeader {
  std::size_t arena_bytes;  // what was taken from the arena
  std::size_t offset;       // from the arena block to the pointer handed out
};

struct CxxHeap {
  std::optional<FixedArena> arena;
  std::size_t in_use = 0;
  std::size_t cap = SIZE_MAX;
  bool failed = false;
};

// Zero-initialised storage, usable before any constructor runs (malloc is called early).
alignas(CxxHeap) unsigned char g_storage[sizeof(CxxHeap)];
bool g_ready = false;
std::atomic_flag g_lock = ATOMIC_FLAG_INIT;

struct Guard {
  Guard() { while (g_lock.test_and_set(std::memory_order_acquire)) {} }
  ~Guard() { g_lock.clear(std::memory_order_release); }
};

CxxHeap* heap() {
  // SAFETY: g_storage is sized and aligned for a CxxHeap, constructed here once.
  auto* h = reinterpret_cast<CxxHeap*>(g_storage);
  if (g_ready) return h->arena ? h : nullptr;
  g_ready = true;
  new (h) CxxHeap{};
  // A raw mmap, not FixedArena::map_at: its error path would allocate.
  // SAFETY: a fresh private mapping at an address nothing else uses (NOREPLACE).
  void* at = ::mmap(reinterpret_cast<void*>(kCxxHeapBase), kCxxHeapBytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  if (at == MAP_FAILED || reinterpret_cast<std::uintptr_t>(at) != kCxxHeapBase) return nullptr;
  h->arena.emplace(FixedArena::over(at, kCxxHeapBytes));
  return h;
}

// `size` bytes aligned to `align` (a power of two >= 16), or null.
void* allocate(std::size_t size, std::size_t align) {
  Guard guard;
  CxxHeap* h = heap();
  if (h == nullptr || size > kCxxHeapBytes) return nullptr;
  const std::size_t total = size + kHeader + (align > kHeader ? align : 0);
  if (total > h->cap - std::min(h->cap, h->in_use)) return nullptr;
  auto* block = static_cast<std::byte*>(h->arena->allocate(total));
  if (block == nullptr) return nullptr;
  // SAFETY: the returned pointer is aligned inside the block and leaves room for the
  // header before it and `size` bytes after it (total covers both and the alignment).
  const auto at = reinterpret_cast<std::uintptr_t>(block + kHeader);
  const std::uintptr_t aligned = (at + align - 1) & ~(std::uintptr_t{align} - 1);
  auto* user = block + (aligned - reinterpret_cast<std::uintptr_t>(block));
  new (user - kHeader) BlockHeader{total, static_cast<std::size_t>(user - block)};
  h->in_use += total;
  return user;
}

BlockHeader* header_of(void* user) {
  // SAFETY: every pointer handed out by this heap has its header right before it.
  return std::launder(reinterpret_cast<BlockHeader*>(static_cast<std::byte*>(user) - kHeader));
}

void release(void* user) {
  if (user == nullptr) return;
  Guard guard;
  CxxHeap* h = heap();
  const BlockHeader header = *header_of(user);
  h->in_use -= header.arena_bytes;
  h->arena->release(static_cast<std::byte*>(user) - header.offset, header.arena_bytes);
}

// Grows or shrinks a block with the usual alignment in place where the arena can.
void* resize(void* user, std::size_t size) {
  Guard guard;
  CxxHeap* h = heap();
  BlockHeader* header = header_of(user);
  if (header->offset != kHeader || size > kCxxHeapBytes) return nullptr;
  const std::size_t old_total = header->arena_bytes;
  const std::size_t total = size + kHeader;
  if (total > old_total && total - old_total > h->cap - std::min(h->cap, h->in_use)) return nullptr;
  auto* block = static_cast<std::byte*>(h->arena->reallocate(static_cast<std::byte*>(user) - kHeader, old_total, total));
  if (block == nullptr) return nullptr;
  // SAFETY: the arena copied the header with the block; it sits at the block's start.
  std::launder(reinterpret_cast<BlockHeader*>(block))->arena_bytes = total;
  h->in_use = h->in_use - old_total + total;
  return block + kHeader;
}

std::size_t usable(void* user) {
  const BlockHeader* header = header_of(user);
  return header->arena_bytes - header->offset;
}

}  // namespace

void limit_cxx_heap(std::size_t more_bytes) noexcept {
  Guard guard;
  if (CxxHeap* h = heap()) h->cap = more_bytes > SIZE_MAX - h->in_use ? SIZE_MAX : h->in_use + more_bytes;
}

std::size_t cxx_heap_in_use() noexcept {
  Guard guard;
  CxxHeap* h = heap();
  return h != nullptr ? h->in_use : 0;
}

}  // namespace sojourn::sandbox::guest

namespace guest = sojourn::sandbox::guest;

extern "C" {

void* malloc(std::size_t size) {
  void* p = guest::allocate(size, 16);
  if (p == nullptr) errno = ENOMEM;
  return p;
}

void free(void* p) { guest::release(p); }

void* calloc(std::size_t count, std::size_t size) {
  if (size != 0 && count > SIZE_MAX / size) {
    errno = ENOMEM;
    return nullptr;
  }
  void* p = malloc(count * size);
  // SAFETY: p holds count * size bytes (recycled blocks are not zero).
  if (p != nullptr) std::memset(p, 0, count * size);
  return p;
}

void* realloc(void* p, std::size_t size) {
  if (p == nullptr) return malloc(size);
  if (size == 0) {
    free(p);
    return nullptr;
  }
  if (void* resized = guest::resize(p, size)) return resized;
  const std::size_t old = guest::usable(p);
  if (size <= old) return p;
  void* moved = malloc(size);
  // SAFETY: both blocks hold at least `old` bytes and are distinct.
  if (moved != nullptr) std::memcpy(moved, p, old);
  if (moved != nullptr) free(p);
  return moved;
}

void* memalign(std::size_t align, std::size_t size) {
  if (align < 16) align = 16;
  if ((align & (align - 1)) != 0) {
    errno = EINVAL;
    return nullptr;
  }
  void* p = guest::allocate(size, align);
  if (p == nullptr) errno = ENOMEM;
  return p;
}

void* aligned_alloc(std::size_t align, std::size_t size) { return memalign(align, size); }

int posix_memalign(void** out, std::size_t align, std::size_t size) {
  if (align < sizeof(void*) || (align & (align - 1)) != 0) return EINVAL;
  void* p = memalign(align, size);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}

void* valloc(std::size_t size) { return memalign(4096, size); }
void* pvalloc(std::size_t size) { return memalign(4096, (size + 4095) & ~std::size_t{4095}); }
std::size_t malloc_usable_size(void* p) { return p == nullptr ? 0 : guest::usable(p); }

}  // extern "C"
