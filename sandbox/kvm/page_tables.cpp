// Page-table construction and the software page walk.
#include "sandbox/kvm/page_tables.hpp"

#include <algorithm>
#include <string>

#include "sandbox/kvm/hex.hpp"
#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
constexpr std::uint64_t kTableFlags = pte::kPresent | pte::kWritable | pte::kUser;
// Range walks stay in the user half: no sign extension, and never the system pages' tables.
bool is_user_range(std::uint64_t start, std::uint64_t end) noexcept {
  return start % kPageSize == 0 && end % kPageSize == 0 && start >= kUserLowest && start <= end && end <= kUserEnd;
}

std::uint64_t index_at(std::uint64_t gva, int level) noexcept {  // level 3 = PML4 ... 0 = PT
  return (gva >> (12 + 9 * level)) & 0x1ff;
}

Error bad_gva(std::uint64_t gva) {
  return fail(Cause::guest_memory, "cannot map " + hex(gva) +
                                            ": not a page-aligned canonical address");
}
}  // namespace

Result<std::uint64_t> PhysicalPages::allocate(GuestMemory& memory) {
  std::uint64_t page = 0;
  if (!free_.empty()) {
    page = free_.back();
    free_.pop_back();
  } else if (next_ + 4096 <= end_) {
    page = next_;
    next_ += 4096;
  } else {
    return over_limit(Cause::memory_full, memory.size());
  }
  // A page given back may hold an earlier mapping's data; a fork may see the master's bytes.
  auto zeroed = memory.zero(page, 4096);
  if (!zeroed) return zeroed.error();
  return page;
}

std::uint64_t PageTables::leaf_entry(std::uint64_t gpa, PageAccess access) noexcept {
  std::uint64_t entry = (gpa & pte::kAddressMask) | pte::kPresent | pte::kAccessed;
  if (access.writable) entry |= pte::kWritable;
  if (access.user) entry |= pte::kUser;
  if (!access.executable) entry |= pte::kNoExecute;
  return entry;
}

Result<void> PageTables::map_page(GuestMemory& memory, PhysicalPages& pages, std::uint64_t gva,
                                  std::uint64_t gpa, PageAccess access) {
  if (gva % 4096 != 0 || !is_canonical(gva)) return bad_gva(gva);
  std::uint64_t table = pml4_;
  for (int level = 3; level > 0; --level) {
    const std::uint64_t slot = table + 8 * index_at(gva, level);
    ++entries_read_;
    auto entry = memory.read_u64(slot);
    if (!entry) return entry.error();
    if ((*entry & pte::kPresent) == 0) {
      auto fresh = pages.allocate(memory);
      if (!fresh) return fresh.error();
      auto written = memory.write_u64(slot, *fresh | kTableFlags);
      if (!written) return written;
      table = *fresh;
    } else {
      table = *entry & pte::kAddressMask;
    }
  }
  return memory.write_u64(table + 8 * index_at(gva, 0), leaf_entry(gpa, access));
}

Result<std::optional<std::uint64_t>> PageTables::leaf_address(const GuestMemory& memory, std::uint64_t gva) const {
  std::uint64_t table = pml4_;
  for (int level = 3; level > 0; --level) {
    ++entries_read_;
    auto entry = memory.read_u64(table + 8 * index_at(gva, level));
    if (!entry) return entry.error();
    if ((*entry & pte::kPresent) == 0) return std::optional<std::uint64_t>{};
    table = *entry & pte::kAddressMask;
  }
  return std::optional<std::uint64_t>(table + 8 * index_at(gva, 0));
}

Result<std::optional<std::uint64_t>> PageTables::unmap_page(GuestMemory& memory, std::uint64_t gva) {
  auto slot = leaf_address(memory, gva);
  if (!slot) return slot.error();
  if (!*slot) return std::optional<std::uint64_t>{};
  auto entry = memory.read_u64(**slot);
  if (!entry) return entry.error();
  if ((*entry & pte::kPresent) == 0) return std::optional<std::uint64_t>{};
  auto cleared = memory.write_u64(**slot, 0);
  if (!cleared) return cleared.error();
  return std::optional<std::uint64_t>(*entry & pte::kAddressMask);
}

Result<bool> PageTables::protect_page(GuestMemory& memory, std::uint64_t gva, PageAccess access) {
  auto slot = leaf_address(memory, gva);
  if (!slot) return slot.error();
  if (!*slot) return false;
  auto entry = memory.read_u64(**slot);
  if (!entry) return entry.error();
  if ((*entry & pte::kPresent) == 0) return false;
  auto written = memory.write_u64(**slot, leaf_entry(*entry & pte::kAddressMask, access));
  if (!written) return written.error();
  return true;
}

Result<std::optional<Translation>> PageTables::translate(const GuestMemory& memory, std::uint64_t gva) const {
  if (!is_canonical(gva)) return std::optional<Translation>{};
  PageAccess access{true, true, true};
  std::uint64_t table = pml4_;
  for (int level = 3; level >= 0; --level) {
    ++entries_read_;
    auto entry = memory.read_u64(table + 8 * index_at(gva, level));
    if (!entry) return entry.error();
    if ((*entry & pte::kPresent) == 0) return std::optional<Translation>{};
    access.user = access.user && (*entry & pte::kUser) != 0;
    access.writable = access.writable && (*entry & pte::kWritable) != 0;
    access.executable = access.executable && (*entry & pte::kNoExecute) == 0;
    if (level > 0 && (*entry & pte::kLargePage) != 0) {  // the monitor never writes these
      return fail(Cause::guest_memory, "unexpected large page mapping " + hex(gva));
    }
    table = *entry & pte::kAddressMask;
  }
  return std::optional<Translation>(Translation{table | (gva & 0xfff), access});
}

// One range operation: clear (collecting leaves) or re-protect.
struct PageTables::RangeWalk {
  GuestMemory& memory;
  bool clear = false;
  PageAccess access;
  std::vector<Leaf> taken;
};

Result<void> PageTables::walk_range(RangeWalk& walk, std::uint64_t table, int level, std::uint64_t base,
                                    std::uint64_t start, std::uint64_t end) {
  // [start, end) lies inside this table's span [base, base + 512 * span), and start < end.
  const std::uint64_t span = std::uint64_t{1} << (12 + 9 * level);
  const std::uint64_t last = (end - 1 - base) / span;
  for (std::uint64_t index = (start - base) / span; index <= last; ++index) {
    const std::uint64_t slot = table + 8 * index;
    ++entries_read_;
    auto entry = walk.memory.read_u64(slot);
    if (!entry) return entry.error();
    if ((*entry & pte::kPresent) == 0) continue;
    const std::uint64_t at = base + index * span;
    const std::uint64_t target = *entry & pte::kAddressMask;
    if (level == 0) {
      auto written = walk.memory.write_u64(slot, walk.clear ? 0 : leaf_entry(target, walk.access));
      if (!written) return written;
      if (walk.clear) walk.taken.push_back(Leaf{at, target});
      continue;
    }
    if ((*entry & pte::kLargePage) != 0) {  // the monitor never writes these
      return fail(Cause::guest_memory, "unexpected large page mapping " + hex(at));
    }
    // Tables stay, even emptied: see unmap_range in the header.
    auto inner = walk_range(walk, target, level - 1, at, std::max(start, at), std::min(end, at + span));
    if (!inner) return inner;
  }
  return {};
}

Result<std::vector<Leaf>> PageTables::unmap_range(GuestMemory& memory, std::uint64_t start, std::uint64_t end) {
  if (!is_user_range(start, end)) return bad_gva(start);
  RangeWalk walk{memory, true, {}, {}};
  if (start < end) {
    if (auto done = walk_range(walk, pml4_, 3, 0, start, end); !done) return done.error();
  }
  return std::move(walk.taken);
}

Result<void> PageTables::protect_range(GuestMemory& memory, std::uint64_t start, std::uint64_t end,
                                       PageAccess access) {
  if (!is_user_range(start, end)) return bad_gva(start);
  RangeWalk walk{memory, false, access, {}};
  if (start == end) return {};
  return walk_range(walk, pml4_, 3, 0, start, end);
}

}  // namespace sojourn::sandbox::kvm
