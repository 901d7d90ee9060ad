// malloc, free, calloc, realloc and the aligned variants over FixedArena, for the static
// guest executables (glibc supports replacing its malloc in a static link when all of
// these are provided). Each block carries a 16-byte header with its arena size and the
// offset of the returned pointer, since free() does not pass a size.
//
// No lock: every process that runs this allocator has one thread, for its whole life.
//  - The executable starts no thread: nothing linked into it calls pthread_create, clone or
//    clone3 with CLONE_VM (the guest library, its codec, LuaJIT, libseccomp and glibc's
//    start-up; the zygote forks whole processes, one thread each, with clone3 without
//    CLONE_VM or CLONE_THREAD).
//  - A jailed guest cannot start one later: its seccomp filter (syscall_filter.cpp) allows no
//    clone, clone3, fork or vfork, and RLIMIT_NPROC is 0. The microVM's guest runs the same
//    ELF (--serve) under a syscall table (sandbox/kvm/syscall_table.cpp) that answers clone
//    and clone3 with -ENOSYS.
//  - Signal handlers (the guest's SIGSYS and SIGXCPU reports) never allocate: a lock would
//    not have made that safe either (the handler would spin on the lock it interrupted).
// tests/process/single_thread_test.cpp fails if a zygote or a guest ever has a second thread,
// or if the filter or the microVM's table ever lets one be made. The spin lock this replaced
// was an `xchg` on every malloc and free (~3% of a warm guest's samples).
//
// A forked guest allocates from a heap of its own (begin_fresh_cxx_heap): its first blocks
// land on fresh, adjacent pages past everything the zygote ever wrote, instead of in the
// blocks the zygote freed, each on a page the fork shares copy-on-write (a page copied per
// block).
#include "sandbox/guest/guest_heap.hpp"

#include <sys/mman.h>

#include <algorithm>
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
  std::optional<FixedArena> arena;  // where blocks are allocated
  // In a forked guest: the zygote's arena, below `fresh_from`, which only takes back the
  // blocks the zygote handed out (it never allocates again: its top stays below fresh_from).
  std::optional<FixedArena> inherited;
  std::uintptr_t fresh_from = 0;
  std::size_t in_use = 0;
  std::size_t cap = SIZE_MAX;
  bool failed = false;
};

// Zero-initialised storage, usable before any constructor runs (malloc is called early).
alignas(CxxHeap) unsigned char g_storage[sizeof(CxxHeap)];
bool g_ready = false;

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

// The arena a block came from: the inherited one below the fresh heap's start.
FixedArena& arena_of(CxxHeap& h, const void* user) {
  return h.inherited && reinterpret_cast<std::uintptr_t>(user) < h.fresh_from ? *h.inherited : *h.arena;
}

void release(void* user) {
  if (user == nullptr) return;
  CxxHeap* h = heap();
  const BlockHeader header = *header_of(user);
  h->in_use -= header.arena_bytes;
  arena_of(*h, user).release(static_cast<std::byte*>(user) - header.offset, header.arena_bytes);
}

// Grows or shrinks a block with the usual alignment in place where the arena can.
void* resize(void* user, std::size_t size) {
  CxxHeap* h = heap();
  BlockHeader* header = header_of(user);
  if (header->offset != kHeader || size > kCxxHeapBytes) return nullptr;
  // An inherited block is moved (realloc copies it): grown in place, it could take the
  // inherited arena's top up into the fresh heap.
  if (&arena_of(*h, user) != &*h->arena) return nullptr;
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
  if (CxxHeap* h = heap()) h->cap = more_bytes > SIZE_MAX - h->in_use ? SIZE_MAX : h->in_use + more_bytes;
}

void begin_fresh_cxx_heap() noexcept {
  CxxHeap* h = heap();
  if (h == nullptr || h->inherited) return;
  // Past the highest top the zygote's arena ever reached, on a page of its own: nothing was
  // ever written there, in the zygote or here, so those pages are still the mapping's zeros
  // and the new bookkeeping needs only its non-zero fields written.
  constexpr std::uintptr_t kPage = 4096;
  const std::uintptr_t from = (h->arena->base() + h->arena->peak() + kPage - 1) & ~(kPage - 1);
  const std::uintptr_t end = kCxxHeapBase + kCxxHeapBytes;
  if (end - from < (std::size_t{1} << 20)) return;  // (never: the zygote holds a few hundred KiB)
  h->inherited = h->arena;
  h->fresh_from = from;
  // SAFETY: [from, end) lies inside the C++ heap's mapping, above every block handed out.
  h->arena.emplace(FixedArena::over_zeroed(reinterpret_cast<void*>(from), end - from));
}

std::size_t cxx_heap_in_use() noexcept {
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
