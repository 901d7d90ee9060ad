// The zygote's executable image, made inheritable page table and all: see zygote_image.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sojourn::sandbox::guest {

struct ImageShare {
  std::size_t segments = 0;  // read-only PT_LOAD segments whose page tables a fork now copies
  std::size_t bytes = 0;     // their size
  std::string error;         // empty, or why a segment was left as it was
};

// Makes every fork of the calling process inherit the mapped pages of its executable's
// read-only segments (text, rodata, headers) instead of faulting them in again one by one.
// Call once, single-threaded, before the first fork. The segments' protections are the same
// afterwards; a segment that cannot be prepared is left as it was (forks then fault it in, as
// before). Ends the process if a segment's protection cannot be put back.
ImageShare share_image_with_forks();

// Address ranges [from, to), page-aligned; empty when from == to.
struct PageRange {
  std::uintptr_t from = 0;
  std::uintptr_t to = 0;
};

// The part of the executable's writable segment that stays writable (.data, .bss: past the
// read-only-after-relocation part), which a fork shares copy-on-write with its parent.
PageRange writable_data_pages();

// In a fresh fork: takes its own copies of the pages it shares copy-on-write with its parent
// and is about to write (`ranges`, plus the stack pages around the caller's frame) with one
// call per range instead of one page fault per page. A hint: a kernel without
// MADV_POPULATE_WRITE leaves them to fault as before. Allocates nothing. Also takes the
// page of the thread's control block (the stack guard, errno).
void copy_shared_pages(const PageRange* ranges, std::size_t count) noexcept;

}  // namespace sojourn::sandbox::guest
