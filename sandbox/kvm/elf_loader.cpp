// ELF64 parsing (System V gABI + x86-64 psABI) and loading into guest memory.
#include "sandbox/kvm/elf_loader.hpp"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "sandbox/kvm/hex.hpp"
#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
constexpr std::uint64_t kMaxProgramHeaders = 64;

Error bad(const std::string& what) { return fail(Cause::bad_elf, what); }

template <class T>
T read_struct(std::span<const std::byte> file, std::uint64_t offset) {
  T value;
  // SAFETY: callers checked offset + sizeof(T) <= file.size(); memcpy into a trivially
  // copyable struct needs no alignment.
  std::memcpy(&value, file.data() + offset, sizeof(T));
  return value;
}

int prot_of(std::uint32_t flags) {
  return ((flags & PF_R) != 0 ? kProtRead : 0) | ((flags & PF_W) != 0 ? kProtWrite : 0) |
         ((flags & PF_X) != 0 ? kProtExec : 0);
}

constexpr std::uint64_t page_down(std::uint64_t a) { return a & ~(kPageSize - 1); }
constexpr std::uint64_t page_up(std::uint64_t a) { return (a + kPageSize - 1) & ~(kPageSize - 1); }

Result<void> check_header(std::span<const std::byte> file, const Elf64_Ehdr& eh) {
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return bad("no ELF magic (\\x7fELF) at the start of the file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) return bad("not a 64-bit ELF (class " + std::to_string(eh.e_ident[EI_CLASS]) + ")");
  if (eh.e_ident[EI_DATA] != ELFDATA2LSB) return bad("not little-endian (data encoding " + std::to_string(eh.e_ident[EI_DATA]) + ")");
  if (eh.e_ident[EI_VERSION] != EV_CURRENT) return bad("unknown ELF version " + std::to_string(eh.e_ident[EI_VERSION]));
  if (eh.e_type == ET_DYN) return bad("a position-independent executable (ET_DYN); the microVM runs static non-PIE executables only");
  if (eh.e_type != ET_EXEC) return bad("not an executable (e_type " + std::to_string(eh.e_type) + ")");
  if (eh.e_machine != EM_X86_64) return bad("not an x86-64 executable (e_machine " + std::to_string(eh.e_machine) + ")");
  if (eh.e_phentsize != sizeof(Elf64_Phdr)) {
    return bad("program header entries of " + std::to_string(eh.e_phentsize) + " bytes, expected 56");
  }
  if (eh.e_phnum == 0 || eh.e_phnum > kMaxProgramHeaders) {
    return bad(std::to_string(eh.e_phnum) + " program headers, expected 1 to 64");
  }
  if (eh.e_phoff > file.size() || std::uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr) > file.size() - eh.e_phoff) {
    return bad("program headers at offset " + hex(eh.e_phoff) + " run past the end of the " +
               std::to_string(file.size()) + "-byte file");
  }
  return {};
}

Result<void> check_segment(std::span<const std::byte> file, const Elf64_Phdr& ph, std::size_t index,
                           const ElfSegment* previous) {
  const std::string name = "segment " + std::to_string(index);
  if (ph.p_filesz > ph.p_memsz) {
    return bad(name + ": file size " + hex(ph.p_filesz) + " exceeds memory size " + hex(ph.p_memsz));
  }
  if (ph.p_offset > file.size() || ph.p_filesz > file.size() - ph.p_offset) {
    return bad(name + ": file bytes [" + hex(ph.p_offset) + ", +" + hex(ph.p_filesz) + ") run past the end of the " +
               std::to_string(file.size()) + "-byte file");
  }
  if (ph.p_vaddr % kPageSize != ph.p_offset % kPageSize) {
    return bad(name + ": address " + hex(ph.p_vaddr) + " and file offset " + hex(ph.p_offset) +
               " differ modulo the page size");
  }
  if (ph.p_memsz == 0 || ph.p_vaddr < kUserLowest || ph.p_vaddr > kMmapTop || ph.p_memsz > kMmapTop - ph.p_vaddr) {
    return bad(name + ": [" + hex(ph.p_vaddr) + ", +" + hex(ph.p_memsz) + ") is empty or outside the guest's image area [" +
               hex(kUserLowest) + ", " + hex(kMmapTop) + ")");
  }
  if ((ph.p_flags & PF_W) != 0 && (ph.p_flags & PF_X) != 0) return bad(name + " is both writable and executable");
  if (previous != nullptr && ph.p_vaddr < previous->vaddr + previous->memsz) {
    return bad(name + ": starts at " + hex(ph.p_vaddr) + ", below the end " + hex(previous->vaddr + previous->memsz) +
               " of the segment before it (PT_LOAD segments must be ascending and disjoint)");
  }
  return {};
}
}  // namespace

Result<std::vector<std::byte>> read_elf_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(Cause::bad_elf, "cannot read " + path);
  const std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return fail(Cause::bad_elf, "cannot read " + path);
  std::vector<std::byte> bytes(chars.size());
  if (!chars.empty()) std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

Result<ElfImage> parse_elf(std::span<const std::byte> file) {
  if (file.size() < sizeof(Elf64_Ehdr)) {
    return bad("a file of " + std::to_string(file.size()) + " bytes is shorter than an ELF header (64 bytes)");
  }
  const auto eh = read_struct<Elf64_Ehdr>(file, 0);
  if (auto ok = check_header(file, eh); !ok) return ok.error();

  ElfImage image;
  image.entry = eh.e_entry;
  image.phnum = eh.e_phnum;
  std::uint64_t pt_phdr = 0;
  for (std::size_t i = 0; i < eh.e_phnum; ++i) {
    const auto ph = read_struct<Elf64_Phdr>(file, eh.e_phoff + i * sizeof(Elf64_Phdr));
    switch (ph.p_type) {
      case PT_INTERP: return bad("it asks for an interpreter (PT_INTERP): a dynamically linked executable");
      case PT_DYNAMIC: return bad("it has a dynamic section (PT_DYNAMIC): not a static executable");
      case PT_GNU_STACK:
        if ((ph.p_flags & PF_X) != 0) return bad("it asks for an executable stack (PT_GNU_STACK with PF_X)");
        break;
      case PT_PHDR: pt_phdr = ph.p_vaddr; break;
      case PT_LOAD: {
        const ElfSegment* previous = image.segments.empty() ? nullptr : &image.segments.back();
        if (auto ok = check_segment(file, ph, image.segments.size(), previous); !ok) return ok.error();
        image.segments.push_back({ph.p_vaddr, ph.p_memsz, ph.p_offset, ph.p_filesz, prot_of(ph.p_flags)});
        break;
      }
      default: break;  // PT_NOTE, PT_TLS, PT_GNU_PROPERTY, PT_GNU_RELRO: for glibc, not for us
    }
  }
  if (image.segments.empty()) return bad("no loadable segment (PT_LOAD)");
  const auto& last = image.segments.back();
  image.image_end = last.vaddr + last.memsz;

  const bool entry_ok = std::any_of(image.segments.begin(), image.segments.end(), [&](const ElfSegment& s) {
    return (s.prot & kProtExec) != 0 && image.entry >= s.vaddr && image.entry < s.vaddr + s.memsz;
  });
  if (!entry_ok) return bad("entry point " + hex(image.entry) + " is not inside an executable segment");

  // AT_PHDR: PT_PHDR if present (never in a static non-PIE glibc binary), else the loaded
  // segment whose file bytes hold the program headers.
  const std::uint64_t table_bytes = std::uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr);
  for (const auto& s : image.segments) {
    if (eh.e_phoff >= s.offset && eh.e_phoff + table_bytes <= s.offset + s.filesz) {
      image.phdr_vaddr = s.vaddr + (eh.e_phoff - s.offset);
    }
  }
  if (pt_phdr != 0) image.phdr_vaddr = pt_phdr;
  if (image.phdr_vaddr == 0) return bad("the program headers are not inside a loaded segment (AT_PHDR would point nowhere)");
  return image;
}

Result<void> load_elf(const ElfImage& image, std::span<const std::byte> file, GuestMemory& memory,
                      AddressSpace& space) {
  for (const auto& s : image.segments) {
    std::uint64_t first = page_down(s.vaddr);
    const std::uint64_t end = page_up(s.vaddr + s.memsz);
    // Two segments may share a page (the end of one, the start of the next): the page gets
    // both protections, as the kernel's loader gives it.
    std::uint64_t shared_start = 0;
    if (const Region* shared = space.region_at(first, &shared_start); shared != nullptr) {
      if (((shared->prot | s.prot) & (kProtWrite | kProtExec)) == (kProtWrite | kProtExec)) {
        return bad("segments share the page at " + hex(first) + ", which would be writable and executable");
      }
      auto widened = space.protect(memory, first, kPageSize, shared->prot | s.prot);
      if (!widened) return widened.error();
      first += kPageSize;
    }
    if (first < end) {
      if (auto reserved = space.reserve(first, end - first, s.prot); !reserved) return reserved;
    }
    // Copy the file bytes page by page, ignoring the protection (read-only text included).
    for (std::uint64_t done = 0; done < s.filesz;) {
      const std::uint64_t gva = s.vaddr + done;
      auto page = space.back_page(memory, gva);
      if (!page) return page.error();
      const std::uint64_t chunk = std::min(s.filesz - done, kPageSize - gva % kPageSize);
      if (auto w = memory.write(*page + gva % kPageSize, file.subspan(s.offset + done, chunk)); !w) return w;
      done += chunk;
    }
  }
  return {};
}

}  // namespace sojourn::sandbox::kvm
