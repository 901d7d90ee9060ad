// The guest's virtual address space as the monitor keeps it: regions reserved by the ELF
// loader, the stack, brk and mmap, each with its protection; a region's pages are backed by
// physical pages only when first touched (by the guest, through a #PF exit, or by the host).
// Bounded (layout.hpp): at most kMaxRegions regions and reserve_limit_for(memory) reserved
// bytes; range operations cost the regions and present page-table entries they meet, never
// the pages of the range.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>

#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/page_tables.hpp"
#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

// PROT_READ/PROT_WRITE/PROT_EXEC values, so syscall arguments pass through unchanged.
inline constexpr int kProtRead = 1;
inline constexpr int kProtWrite = 2;
inline constexpr int kProtExec = 4;

struct Region {
  std::uint64_t end = 0;
  int prot = 0;
};

// The x86 #PF error code bits the monitor reads from the exception frame.
struct FaultCause {
  bool present = false;  // a protection violation, not a missing page
  bool write = false;
  bool user = false;
  bool fetch = false;
  static FaultCause from_error_code(std::uint64_t code) noexcept {
    return {(code & 1) != 0, (code & 2) != 0, (code & 4) != 0, (code & 16) != 0};
  }
};

class AddressSpace {
 public:
  // Physical pages come from [kFirstFreePage, memory_bytes).
  explicit AddressSpace(std::uint64_t memory_bytes);

  PageTables& tables() noexcept { return tables_; }
  const PageTables& tables() const noexcept { return tables_; }
  PhysicalPages& pages() noexcept { return pages_; }

  // [start, start + length) within [kUserLowest, kUserMapEnd) and overlapping no region.
  bool is_free(std::uint64_t start, std::uint64_t length) const;
  // The highest free page-aligned range of `length` bytes ending at or below `below`.
  std::optional<std::uint64_t> find_free(std::uint64_t length, std::uint64_t below) const;
  // A new region (page-aligned, free, within the bounds); no page is backed yet. It merges
  // with a neighbour of the same protection.
  Result<void> reserve(std::uint64_t start, std::uint64_t length, int prot);
  // Drops every region page in the range and gives its physical pages back. Cutting a hole
  // in a region needs one more region: past kMaxRegions that is an error, nothing dropped.
  Result<void> release(GuestMemory& memory, std::uint64_t start, std::uint64_t length);
  // New protection for a range wholly covered by regions (false if it is not).
  Result<bool> protect(GuestMemory& memory, std::uint64_t start, std::uint64_t length, int prot);
  // Moves the regions of [from, from + length) (wholly covered) to `to` (a free range), each
  // keeping its own protection and its pages' contents.
  Result<void> move(GuestMemory& memory, std::uint64_t from, std::uint64_t length, std::uint64_t to);
  const Region* region_at(std::uint64_t gva, std::uint64_t* start = nullptr) const;

  // The guest faulted at `gva`: back the page if a region allows the access, or a precise
  // Cause::guest_fault (or Cause::memory_full when no physical page is left).
  Result<void> resolve_fault(GuestMemory& memory, std::uint64_t gva, FaultCause cause);
  // Host-side access by guest-virtual address (the syscall emulation): the whole range must
  // lie in regions (a write: writable ones); pages are backed as needed. The error is the
  // guest's -EFAULT, so it carries no message.
  bool range_allows(std::uint64_t gva, std::uint64_t length, int prot) const;
  bool copy_to_guest(GuestMemory& memory, std::uint64_t gva, std::span<const std::byte> bytes);
  bool copy_from_guest(GuestMemory& memory, std::uint64_t gva, std::span<std::byte> out);

  // Backs the page holding `gva` with a fresh zeroed page if it has none; its gpa.
  Result<std::uint64_t> back_page(GuestMemory& memory, std::uint64_t gva);

  std::size_t region_count() const noexcept { return regions_.size(); }
  std::uint64_t reserved_bytes() const noexcept { return reserved_; }
  std::uint64_t reserve_limit() const noexcept { return reserve_limit_; }
  // The monitor's work for this guest so far: regions visited by range operations plus
  // page-table entries read (tests bound it; it never depends on a range's length).
  std::uint64_t work() const noexcept { return regions_visited_ + tables_.entries_read(); }

 private:
  Result<void> split_at(std::uint64_t gva);
  void merge_at(std::uint64_t gva);  // joins the regions meeting at gva if their protections match
  Error refused(std::uint64_t start, std::uint64_t length, const std::string& why) const;
  static PageAccess access_of(int prot) noexcept;

  std::map<std::uint64_t, Region> regions_;  // by start; never two adjacent with one protection
  PageTables tables_;
  PhysicalPages pages_;
  std::uint64_t reserve_limit_;
  std::uint64_t reserved_ = 0;  // bytes in regions_
  std::uint64_t regions_visited_ = 0;
};

}  // namespace sojourn::sandbox::kvm
