// Tests of the ELF loader with the real guest executable, hand-broken copies of it, and
// random mutations and truncations (the loader must refuse with a message, never crash).
#include <doctest/doctest.h>

#include <elf.h>

#include <algorithm>
#include <random>

#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/hex.hpp"
#include "sandbox/kvm/layout.hpp"
#include "tests/kvm/kvm_test_support.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn::sandbox::kvm;
using kvm_test::TestVm;

namespace {
Elf64_Ehdr& header(std::vector<std::byte>& file) {
  // SAFETY: the file is at least an ELF header long (the real guest); test-only aliasing.
  return *reinterpret_cast<Elf64_Ehdr*>(file.data());
}

Elf64_Phdr& phdr(std::vector<std::byte>& file, std::size_t index) {
  // SAFETY: index < e_phnum of the real guest, whose headers lie inside the file.
  return *reinterpret_cast<Elf64_Phdr*>(file.data() + header(file).e_phoff + index * sizeof(Elf64_Phdr));
}

std::size_t load_index(std::vector<std::byte>& file, std::size_t nth) {
  for (std::size_t i = 0, seen = 0; i < header(file).e_phnum; ++i) {
    if (phdr(file, i).p_type == PT_LOAD && seen++ == nth) return i;
  }
  FAIL("no such PT_LOAD");
  return 0;
}

// The parser's refusal of `file`, for CHECK_ERROR (a value here fails the check).
Result<ElfImage> refusal(const std::vector<std::byte>& file) { return parse_elf(file); }
}  // namespace

TEST_CASE("the real guest parses into its entry point, program headers and four segments") {
  auto file = kvm_test::guest_elf();
  auto image = parse_elf(file);
  REQUIRE(image.ok());
  CHECK(image->entry == header(file).e_entry);
  CHECK(image->phnum == header(file).e_phnum);
  CHECK(image->phdr_vaddr == 0x400000 + header(file).e_phoff);
  REQUIRE(image->segments.size() == 4);
  CHECK(image->segments[0].prot == kProtRead);
  CHECK(image->segments[1].prot == (kProtRead | kProtExec));
  CHECK(image->segments[3].prot == (kProtRead | kProtWrite));
  CHECK(image->image_end == image->segments[3].vaddr + image->segments[3].memsz);
}

TEST_CASE("the loaded guest has its bytes at their addresses, text executable, data writable, bss zero") {
  auto file = kvm_test::guest_elf();
  auto image = parse_elf(file).value();
  TestVm vm(64ULL << 20);
  REQUIRE(load_elf(image, file, vm.memory, vm.state.space).ok());
  const auto& tables = vm.state.space.tables();
  auto entry = tables.translate(vm.memory, image.entry).value();
  REQUIRE(entry.has_value());
  CHECK(entry->access == PageAccess{true, false, true});
  const auto& text = image.segments[1];
  std::byte at_entry[16];
  REQUIRE(vm.memory.read(entry->gpa, at_entry).ok());
  CHECK(std::memcmp(at_entry, file.data() + text.offset + (image.entry - text.vaddr), 16) == 0);

  const auto& data = image.segments[3];
  CHECK(tables.translate(vm.memory, data.vaddr).value()->access == PageAccess{true, true, false});
  CHECK(tables.translate(vm.memory, image.segments[0].vaddr).value()->access == PageAccess{true, false, false});
  std::uint64_t bss = 1;
  CHECK(vm.state.space.copy_from_guest(vm.memory, (data.vaddr + data.memsz - 8) & ~std::uint64_t{7},
                                       std::as_writable_bytes(std::span(&bss, 1))));
  CHECK(bss == 0);
  // The program headers are where AT_PHDR will say.
  Elf64_Phdr first{};
  CHECK(vm.state.space.copy_from_guest(vm.memory, image.phdr_vaddr, std::as_writable_bytes(std::span(&first, 1))));
  CHECK(first.p_type == phdr(file, 0).p_type);
}

TEST_CASE("malformed headers are refused with what is wrong") {
  const auto good = kvm_test::guest_elf();
  auto file = good;
  CHECK_ERROR(refusal(std::vector<std::byte>(good.begin(), good.begin() + 10)), Cause::bad_elf, "10 bytes",
              "ELF header");
  file[1] = std::byte{'X'};
  CHECK_ERROR(refusal(file), Cause::bad_elf, "no ELF magic");
  file = good; header(file).e_ident[EI_CLASS] = ELFCLASS32;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "64-bit", "class 1");
  file = good; header(file).e_ident[EI_DATA] = ELFDATA2MSB;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "little-endian", "encoding 2");
  file = good; header(file).e_ident[EI_VERSION] = 7;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "version 7");
  file = good; header(file).e_type = ET_DYN;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "ET_DYN");
  file = good; header(file).e_type = ET_REL;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "e_type 1");
  file = good; header(file).e_machine = EM_AARCH64;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "e_machine 183");
  file = good; header(file).e_phentsize = 32;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "entries of 32 bytes", "56");
  file = good; header(file).e_phnum = 0;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "0 program headers");
  file = good; header(file).e_phoff = good.size() - 100;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "program headers", hex(good.size() - 100),
              std::to_string(good.size()) + "-byte file");
  file = good; header(file).e_entry = 0x400000;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "entry point 0x400000");
}

TEST_CASE("malformed segments are refused with the segment and what is wrong") {
  const auto good = kvm_test::guest_elf();
  auto file = good;
  const std::size_t text = load_index(file, 1), data = load_index(file, 3);
  const auto text_ph = phdr(file, text);
  phdr(file, data).p_filesz = phdr(file, data).p_memsz + 1;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "segment 3:", "file size " + hex(phdr(file, data).p_filesz),
              "memory size " + hex(phdr(file, data).p_memsz));
  file = std::vector<std::byte>(good.begin(), good.begin() + static_cast<long>(text_ph.p_offset + 100));
  CHECK_ERROR(refusal(file), Cause::bad_elf, "segment 1:", hex(text_ph.p_offset), hex(text_ph.p_filesz),
              std::to_string(file.size()) + "-byte file");
  file = good; phdr(file, text).p_vaddr += 8;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "segment 1:", hex(text_ph.p_vaddr + 8), hex(text_ph.p_offset),
              "modulo the page size");
  // The first segment's size depends on the build (Release, Debug): read it, never assume it.
  const auto first_ph = phdr(file, load_index(file, 0));
  file = good; phdr(file, load_index(file, 0)).p_vaddr = 0;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "segment 0:", "[0x0, +" + hex(first_ph.p_memsz) + ")",
              "image area [0x10000, " + hex(kMmapTop) + ")");
  file = good; phdr(file, text).p_flags |= PF_W;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "segment 1", "writable and executable");
  file = good; phdr(file, text).p_vaddr = 0x400000 + text_ph.p_offset % kPageSize;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "segment 1:", "starts at " + hex(0x400000 + text_ph.p_offset % kPageSize),
              "end " + hex(first_ph.p_vaddr + first_ph.p_memsz), "ascending and disjoint");
  file = good; phdr(file, 4).p_type = PT_INTERP;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "PT_INTERP");
  file = good; phdr(file, 4).p_type = PT_DYNAMIC;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "PT_DYNAMIC");
  file = good;
  for (std::size_t i = 0; i < header(file).e_phnum; ++i) {
    if (phdr(file, i).p_type == PT_GNU_STACK) phdr(file, i).p_flags |= PF_X;
  }
  CHECK_ERROR(refusal(file), Cause::bad_elf, "PT_GNU_STACK");
  file = good;
  for (std::size_t i = 0; i < header(file).e_phnum; ++i) phdr(file, i).p_type = PT_NOTE;
  CHECK_ERROR(refusal(file), Cause::bad_elf, "no loadable segment");
}

TEST_CASE("a truncation of the guest is refused unless only the section headers were cut") {
  const auto good = kvm_test::guest_elf();
  const auto parsed = parse_elf(good);  // kept: `last` refers into it
  const auto& last = parsed.value().segments.back();
  const std::size_t needed = last.offset + last.filesz;  // the loader never reads past it
  std::mt19937_64 rng(5);
  std::vector<std::size_t> lengths;
  for (std::size_t n = 0; n < 1024; n += 3) lengths.push_back(n);
  for (int i = 0; i < 200; ++i) lengths.push_back(rng() % good.size());
  lengths.push_back(needed - 1);
  lengths.push_back(needed);
  for (std::size_t n : lengths) {
    auto image = parse_elf(std::span(good).first(n));
    CHECK(image.ok() == (n >= needed));
    if (!image.ok()) CHECK_ERROR(image, Cause::bad_elf);
  }
}

TEST_CASE("random mutations of the headers are refused with a message or load within guest memory") {
  const auto good = kvm_test::guest_elf();
  const std::size_t header_bytes = 64 + 10 * sizeof(Elf64_Phdr);
  std::mt19937_64 rng(42);
  int loaded = 0, refused = 0;
  // Only the headers change: each round restores them instead of copying the whole file
  // (megabytes; 3,000 copies took minutes under ASan).
  auto file = good;
  for (int round = 0; round < 3000; ++round) {
    std::copy_n(good.begin(), header_bytes, file.begin());
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const std::size_t at = rng() % header_bytes;
      file[at] = round % 3 == 0 ? std::byte{0xff} : static_cast<std::byte>(rng());
    }
    auto image = parse_elf(file);
    if (!image.ok()) {
      ++refused;
      CHECK_ERROR(image, Cause::bad_elf);
      CHECK_FALSE(image.error().detail.empty());
      continue;
    }
    if (loaded >= 40) continue;  // loading copies megabytes: a sample is enough
    ++loaded;
    TestVm vm(64ULL << 20);
    auto load = load_elf(*image, file, vm.memory, vm.state.space);
    if (!load.ok()) CHECK((load.error().cause == Cause::memory_full || load.error().cause == Cause::guest_memory));
  }
  CHECK(refused > 0);
  CHECK(loaded > 0);
}

TEST_CASE("segments sharing a page get both protections, but never writable and executable together") {
  ElfImage image;
  image.segments = {{0x400000, 0x800, 0, 0, kProtRead}, {0x400800, 0x100, 0, 0, kProtRead | kProtWrite}};
  TestVm vm;
  REQUIRE(load_elf(image, {}, vm.memory, vm.state.space).ok());
  CHECK(vm.state.space.region_at(0x400000)->prot == (kProtRead | kProtWrite));

  image.segments = {{0x400000, 0x800, 0, 0, kProtRead | kProtExec}, {0x400800, 0x100, 0, 0, kProtRead | kProtWrite}};
  TestVm other;
  auto refused = load_elf(image, {}, other.memory, other.state.space);
  REQUIRE_FALSE(refused.ok());
  CHECK_ERROR(refused, Cause::bad_elf, "share the page at 0x400000", "writable and executable");
}
