// Why a guest used to fault on its code: fork copies the page table of a private file
// mapping only once the mapping has anonymous pages (an anon_vma); until then the kernel
// leaves the child's table empty, to be refilled by faults. The executable's text and rodata
// never get one (nothing writes them), so every guest of a zygote took ~25 page faults on
// code and constants the zygote had mapped long before (fault-around maps 16 pages per
// fault), at ~16 us each on a paravirtualised VM. Here the zygote gives each read-only
// segment an anon_vma once: it makes the segment writable, rewrites one byte of its first
// page with the value already there (that page becomes a private copy, identical), and
// puts the protection back. Then the zygote maps the whole segment in (MADV_POPULATE_READ),
// and every fork copies its ~630 entries along with the rest of the page table instead of
// the guest faulting them in (a guest's faults went from ~58 to ~33, bench/RESULTS.md).
// No guest can write to the image after this any more than before: the protections are
// the same, and the copy is the zygote's own, taken before any guest exists.
#include "sandbox/guest/zygote_image.hpp"

#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sojourn/core/log.hpp"

namespace sojourn::sandbox::guest {

namespace {

struct Segment {
  std::uintptr_t start;
  std::size_t bytes;
  int prot;
};

int collect(dl_phdr_info* info, std::size_t /*size*/, void* out) {
  auto& segments = *static_cast<std::vector<Segment>*>(out);
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || (ph.p_flags & PF_W) != 0 || ph.p_memsz == 0) continue;
    const std::uintptr_t from = (info->dlpi_addr + ph.p_vaddr) & ~(page - 1);
    const std::uintptr_t to = (info->dlpi_addr + ph.p_vaddr + ph.p_memsz + page - 1) & ~(page - 1);
    const int prot = ((ph.p_flags & PF_R) != 0 ? PROT_READ : 0) | ((ph.p_flags & PF_X) != 0 ? PROT_EXEC : 0);
    segments.push_back({from, to - from, prot});
  }
  return 1;  // the executable comes first; a static one has nothing else
}

}  // namespace

ImageShare share_image_with_forks() {
  ImageShare share;
  std::vector<Segment> segments;
  ::dl_iterate_phdr(collect, &segments);
  for (const Segment& s : segments) {
    void* at = reinterpret_cast<void*>(s.start);
    // SAFETY: [start, start + bytes) is one of this executable's own loaded segments.
    if (::mprotect(at, s.bytes, s.prot | PROT_WRITE) != 0) {
      share.error = std::string("mprotect: ") + std::strerror(errno);
      continue;
    }
    // SAFETY: the page is mapped and now writable; the byte is written back unchanged.
    auto* first = static_cast<volatile unsigned char*>(at);
    *first = *first;
    if (::mprotect(at, s.bytes, s.prot) != 0) {
      // Never fork a guest with a writable image.
      log_error("zygote", std::string("cannot restore the image's protection: ") + std::strerror(errno));
      ::syscall(SYS_exit_group, 1);
    }
    // A hint: without it a fork still copies what the zygote itself has touched.
    (void)::madvise(at, s.bytes, MADV_POPULATE_READ);
    ++share.segments;
    share.bytes += s.bytes;
  }
  return share;
}

}  // namespace sojourn::sandbox::guest
