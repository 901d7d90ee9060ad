// The zygote's executable image, made inheritable page table and all: see zygote_image.cpp.
#pragma once

#include <cstddef>
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

}  // namespace sojourn::sandbox::guest
