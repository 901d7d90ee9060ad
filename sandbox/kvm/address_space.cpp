// Regions, lazy backing and host-side copies through the guest's page tables.
#include "address_space.hpp"

#include <algorithm>
#include <iterator>
#include <string>

#include "hex.hpp"
#include "layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
constexpr std::uint64_t page_down(std::uint64_t a) noexcept { return a & ~(kPageSize - 1); }
}  // namespace

AddressSpace::AddressSpace(std::uint64_t memory_bytes)
    : tables_(kPml4Address), pages_(kFirstFreePage, memory_bytes) {}

PageAccess AddressSpace::access_of(int prot) noexcept {
  return {true, (prot & kProtWrite) != 0, (prot & kProtExec) != 0};
}

bool AddressSpace::is_free(std::uint64_t start, std::uint64_t length) const {
  if (length == 0 || start < kUserLowest || start > kUserEnd || length > kUserEnd - start) return false;
  const std::uint64_t end = start + length;
  auto it = regions_.lower_bound(end);  // first region starting at or after end
  if (it == regions_.begin()) return true;
  --it;
  return it->second.end <= start;
}

std::optional<std::uint64_t> AddressSpace::find_free(std::uint64_t length, std::uint64_t below) const {
  if (length == 0 || below < length) return std::nullopt;
  std::uint64_t candidate_end = page_down(below);
  // Walk regions from the top down; each gap between them is a candidate.
  auto it = regions_.lower_bound(candidate_end);
  while (true) {
    std::uint64_t gap_start = kUserLowest;
    if (it != regions_.begin()) {
      auto prev = std::prev(it);
      if (prev->second.end > candidate_end) {  // a region straddles the candidate end
        candidate_end = prev->first;
        it = prev;
        continue;
      }
      gap_start = prev->second.end;
    }
    if (candidate_end >= gap_start + length && candidate_end - length >= kUserLowest) return candidate_end - length;
    if (it == regions_.begin()) return std::nullopt;
    it = std::prev(it);
    candidate_end = it->first;
  }
}

Result<void> AddressSpace::reserve(std::uint64_t start, std::uint64_t length, int prot) {
  if (start % kPageSize != 0 || length % kPageSize != 0 || !is_free(start, length)) {
    return make_error(Errc::guest_memory, "guest memory: cannot reserve " + std::to_string(length) + " bytes at " +
                                              hex(start) + ": not page-aligned, outside the user half or taken");
  }
  regions_.emplace(start, Region{start + length, prot});
  return {};
}

void AddressSpace::split_at(std::uint64_t gva) {
  auto it = regions_.upper_bound(gva);
  if (it == regions_.begin()) return;
  --it;
  if (it->first < gva && it->second.end > gva) {
    regions_.emplace(gva, Region{it->second.end, it->second.prot});
    it->second.end = gva;
  }
}

Result<void> AddressSpace::release(GuestMemory& memory, std::uint64_t start, std::uint64_t length) {
  const std::uint64_t end = start + length;
  split_at(start);
  split_at(end);
  for (auto it = regions_.lower_bound(start); it != regions_.end() && it->first < end;) {
    for (std::uint64_t page = it->first; page < it->second.end; page += kPageSize) {
      auto gone = tables_.unmap_page(memory, page);
      if (!gone) return gone.error();
      if (*gone) pages_.release(**gone);
    }
    it = regions_.erase(it);
  }
  return {};
}

Result<bool> AddressSpace::protect(GuestMemory& memory, std::uint64_t start, std::uint64_t length, int prot) {
  const std::uint64_t end = start + length;
  for (std::uint64_t at = start; at < end;) {  // covered without holes?
    std::uint64_t region_start = 0;
    const Region* region = region_at(at, &region_start);
    if (region == nullptr) return false;
    at = region->end;
  }
  split_at(start);
  split_at(end);
  for (auto it = regions_.lower_bound(start); it != regions_.end() && it->first < end; ++it) {
    it->second.prot = prot;
    for (std::uint64_t page = it->first; page < it->second.end; page += kPageSize) {
      auto changed = tables_.protect_page(memory, page, access_of(prot));
      if (!changed) return changed.error();
    }
  }
  return true;
}

Result<void> AddressSpace::move(GuestMemory& memory, std::uint64_t from, std::uint64_t length, std::uint64_t to) {
  const Region* source = region_at(from);
  if (source == nullptr) return make_error(Errc::guest_memory, "guest memory: nothing to move at " + hex(from));
  const int prot = source->prot;
  auto reserved = reserve(to, length, prot);
  if (!reserved) return reserved;
  for (std::uint64_t offset = 0; offset < length; offset += kPageSize) {
    auto page = tables_.unmap_page(memory, from + offset);
    if (!page) return page.error();
    if (!*page) continue;
    auto mapped = tables_.map_page(memory, pages_, to + offset, **page, access_of(prot));
    if (!mapped) return mapped;
  }
  return release(memory, from, length);  // only the (now unmapped) region bookkeeping is left
}

const Region* AddressSpace::region_at(std::uint64_t gva, std::uint64_t* start) const {
  auto it = regions_.upper_bound(gva);
  if (it == regions_.begin()) return nullptr;
  --it;
  if (gva >= it->second.end) return nullptr;
  if (start != nullptr) *start = it->first;
  return &it->second;
}

Result<std::uint64_t> AddressSpace::back_page(GuestMemory& memory, std::uint64_t gva) {
  const Region* region = region_at(gva);
  if (region == nullptr) return make_error(Errc::guest_memory, "guest memory: no region at " + hex(gva));
  auto existing = tables_.translate(memory, page_down(gva));
  if (!existing) return existing.error();
  if (*existing) return (*existing)->gpa;  // the page's: page_down(gva) has offset 0
  auto page = pages_.allocate(memory);
  if (!page) return page.error();
  auto mapped = tables_.map_page(memory, pages_, page_down(gva), *page, access_of(region->prot));
  if (!mapped) return mapped.error();
  return *page;
}

Result<void> AddressSpace::resolve_fault(GuestMemory& memory, std::uint64_t gva, FaultCause cause) {
  const char* what = cause.fetch ? "executed" : cause.write ? "wrote to" : "read";
  const Region* region = region_at(gva);
  if (region == nullptr) {
    return make_error(Errc::vm_guest_fault, std::string("microVM guest fault: ") + what + " unmapped memory at " + hex(gva));
  }
  const bool allowed = cause.fetch ? (region->prot & kProtExec) != 0
                       : cause.write ? (region->prot & kProtWrite) != 0
                                     : (region->prot & kProtRead) != 0;
  if (!allowed || cause.present) {
    return make_error(Errc::vm_guest_fault, std::string("microVM guest fault: ") + what + " memory at " + hex(gva) +
                                                " that does not allow it");
  }
  auto backed = back_page(memory, gva);
  if (!backed) return backed.error();
  return {};
}

bool AddressSpace::range_allows(std::uint64_t gva, std::uint64_t length, int prot) const {
  if (length > kUserEnd || gva > kUserEnd - length) return false;
  for (const std::uint64_t end = gva + length; gva < end;) {
    const Region* region = region_at(gva);
    if (region == nullptr || (region->prot & prot) != prot) return false;
    gva = region->end;
  }
  return true;
}

bool AddressSpace::copy_to_guest(GuestMemory& memory, std::uint64_t gva, std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const Region* region = region_at(gva);
    if (region == nullptr || (region->prot & kProtWrite) == 0) return false;
    auto gpa = back_page(memory, gva);
    if (!gpa) return false;
    const std::uint64_t chunk = std::min<std::uint64_t>(bytes.size(), kPageSize - (gva % kPageSize));
    if (!memory.write(*gpa + gva % kPageSize, bytes.first(chunk))) return false;
    bytes = bytes.subspan(chunk);
    gva += chunk;
  }
  return true;
}

bool AddressSpace::copy_from_guest(GuestMemory& memory, std::uint64_t gva, std::span<std::byte> out) {
  while (!out.empty()) {
    const Region* region = region_at(gva);
    if (region == nullptr || (region->prot & kProtRead) == 0) return false;
    auto gpa = back_page(memory, gva);
    if (!gpa) return false;
    const std::uint64_t chunk = std::min<std::uint64_t>(out.size(), kPageSize - (gva % kPageSize));
    if (!memory.read(*gpa + gva % kPageSize, out.first(chunk))) return false;
    out = out.subspan(chunk);
    gva += chunk;
  }
  return true;
}

}  // namespace sojourn::sandbox::kvm
