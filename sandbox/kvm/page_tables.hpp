// The guest's 4-level page tables, written by the host into guest memory, and the pool of
// physical pages they and the guest's data come from. translate() is a software page walk:
// what the MMU will see, checked by the tests without a CPU.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

// What a leaf grants. Intermediate entries grant everything, so the leaf alone decides.
struct PageAccess {
  bool user = false;
  bool writable = false;
  bool executable = false;
  friend bool operator==(const PageAccess&, const PageAccess&) = default;
};

// A present leaf taken out of the tables by unmap_range.
struct Leaf {
  std::uint64_t gva = 0;
  std::uint64_t gpa = 0;
};

struct Translation {
  std::uint64_t gpa = 0;  // of the byte asked for, not just the page
  PageAccess access;      // effective: user and writable ANDed, executable = no level has NX
};

namespace pte {
inline constexpr std::uint64_t kPresent = 1ULL << 0;
inline constexpr std::uint64_t kWritable = 1ULL << 1;
inline constexpr std::uint64_t kUser = 1ULL << 2;
inline constexpr std::uint64_t kAccessed = 1ULL << 5;
inline constexpr std::uint64_t kLargePage = 1ULL << 7;
inline constexpr std::uint64_t kNoExecute = 1ULL << 63;
inline constexpr std::uint64_t kAddressMask = 0x000f'ffff'ffff'f000ULL;
}  // namespace pte

// Physical pages above the system area: a bump pointer plus the pages given back.
class PhysicalPages {
 public:
  PhysicalPages(std::uint64_t first, std::uint64_t end) : next_(first), end_(end) {}
  // A zeroed page, or Cause::memory_full when guest memory is full.
  Result<std::uint64_t> allocate(GuestMemory& memory);
  void release(std::uint64_t gpa) { free_.push_back(gpa); }
  std::uint64_t free_pages() const noexcept { return (end_ - next_) / 4096 + free_.size(); }

 private:
  std::uint64_t next_;
  std::uint64_t end_;
  std::vector<std::uint64_t> free_;
};

class PageTables {
 public:
  explicit PageTables(std::uint64_t pml4_gpa) : pml4_(pml4_gpa) {}
  std::uint64_t cr3() const noexcept { return pml4_; }

  // Maps the 4 KiB page at `gva` (page-aligned, canonical) to `gpa`, allocating the missing
  // intermediate tables; replaces an existing leaf.
  Result<void> map_page(GuestMemory& memory, PhysicalPages& pages, std::uint64_t gva, std::uint64_t gpa,
                        PageAccess access);
  // Clears the leaf of `gva`; returns the page it pointed to, if it was present.
  Result<std::optional<std::uint64_t>> unmap_page(GuestMemory& memory, std::uint64_t gva);
  // Changes the access of a present leaf (false if `gva` is not mapped).
  Result<bool> protect_page(GuestMemory& memory, std::uint64_t gva, PageAccess access);
  // The software walk; nullopt if some level is not present.
  Result<std::optional<Translation>> translate(const GuestMemory& memory, std::uint64_t gva) const;

  // Range operations over [start, end) (page-aligned, in the user half). They descend only
  // into present tables, so their cost is the present entries the range meets, never the
  // pages of the range: a terabyte with nothing backed costs a few entries.
  // Clears every present leaf and returns them (their pages are now the caller's). Tables
  // stay, even emptied: the monitor only ever adds upper-level entries and changes leaves.
  // Freeing emptied tables (clearing their upper-level entry, reusing the page) made guests
  // in the nested tests hang or fault even with the CR3 reload after it; the likely cause is
  // KVM's shadow paging, which does not see the host's own writes to a guest's upper-level
  // tables. Tables are bounded by guest memory, and so are the walks.
  Result<std::vector<Leaf>> unmap_range(GuestMemory& memory, std::uint64_t start, std::uint64_t end);
  // Gives every present leaf `access`.
  Result<void> protect_range(GuestMemory& memory, std::uint64_t start, std::uint64_t end, PageAccess access);

  // Entries read by every walk so far: the monitor's page-table work, which tests bound.
  std::uint64_t entries_read() const noexcept { return entries_read_; }

  static std::uint64_t leaf_entry(std::uint64_t gpa, PageAccess access) noexcept;

 private:
  struct RangeWalk;
  Result<std::optional<std::uint64_t>> leaf_address(const GuestMemory& memory, std::uint64_t gva) const;
  Result<void> walk_range(RangeWalk& walk, std::uint64_t table, int level, std::uint64_t base, std::uint64_t start,
                          std::uint64_t end);
  std::uint64_t pml4_;
  mutable std::uint64_t entries_read_ = 0;
};

// True for addresses the CPU accepts (bits 63..47 all equal).
constexpr bool is_canonical(std::uint64_t gva) noexcept {
  const std::uint64_t top = gva >> 47;
  return top == 0 || top == 0x1ffff;
}

}  // namespace sojourn::sandbox::kvm
