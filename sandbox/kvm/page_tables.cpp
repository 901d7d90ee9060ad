// Page-table construction and the software page walk.
#include "page_tables.hpp"

#include <string>

#include "hex.hpp"

namespace sojourn::sandbox::kvm {

namespace {
constexpr std::uint64_t kTableFlags = pte::kPresent | pte::kWritable | pte::kUser;

std::uint64_t index_at(std::uint64_t gva, int level) noexcept {  // level 3 = PML4 ... 0 = PT
  return (gva >> (12 + 9 * level)) & 0x1ff;
}

Error bad_gva(std::uint64_t gva) {
  return make_error(Errc::guest_memory, "guest memory: cannot map " + hex(gva) +
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
    return make_error(Errc::memory_limit, "memory limit of " + std::to_string(memory.size()) + " bytes exceeded");
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
    auto entry = memory.read_u64(table + 8 * index_at(gva, level));
    if (!entry) return entry.error();
    if ((*entry & pte::kPresent) == 0) return std::optional<Translation>{};
    access.user = access.user && (*entry & pte::kUser) != 0;
    access.writable = access.writable && (*entry & pte::kWritable) != 0;
    access.executable = access.executable && (*entry & pte::kNoExecute) == 0;
    if (level > 0 && (*entry & pte::kLargePage) != 0) {  // the monitor never writes these
      return make_error(Errc::guest_memory, "guest memory: unexpected large page mapping " + hex(gva));
    }
    table = *entry & pte::kAddressMask;
  }
  return std::optional<Translation>(Translation{table | (gva & 0xfff), access});
}

}  // namespace sojourn::sandbox::kvm
