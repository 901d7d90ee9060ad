// Loads a static, non-PIE x86-64 ELF executable (the sojourn guest) into the microVM: every
// PT_LOAD segment at its own virtual address, with its own protection. Anything the monitor
// cannot run as it is gets a precise "bad guest ELF: ..." error, never a partial load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sandbox/kvm/address_space.hpp"
#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

struct ElfSegment {
  std::uint64_t vaddr = 0;
  std::uint64_t memsz = 0;
  std::uint64_t offset = 0;
  std::uint64_t filesz = 0;
  int prot = 0;  // kProtRead | kProtWrite | kProtExec
};

struct ElfImage {
  std::uint64_t entry = 0;
  std::uint64_t phdr_vaddr = 0;  // AT_PHDR: where the program headers are once loaded
  std::uint64_t phnum = 0;       // AT_PHNUM
  std::vector<ElfSegment> segments;
  std::uint64_t image_end = 0;   // end of the highest segment: brk starts on the next page
};

// The whole file at `path` (the guest executable). Errors: bad_elf "bad guest ELF: cannot read PATH".
Result<std::vector<std::byte>> read_elf_file(const std::string& path);

// Checks and describes the file; touches no guest memory.
Result<ElfImage> parse_elf(std::span<const std::byte> file);

// Reserves the segments' pages in `space` and copies their file bytes (the rest is zero).
Result<void> load_elf(const ElfImage& image, std::span<const std::byte> file, GuestMemory& memory,
                      AddressSpace& space);

}  // namespace sojourn::sandbox::kvm
