// Regions, lazy backing and host-side copies through the guest's page tables.
#include "sandbox/kvm/address_space.hpp"

#include <algorithm>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "sandbox/kvm/hex.hpp"
#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
constexpr std::uint64_t page_down(std::uint64_t a) noexcept { return a & ~(kPageSize - 1); }
}  // namespace

AddressSpace::AddressSpace(std::uint64_t memory_bytes)
    : tables_(kPml4Address), pages_(kFirstFreePage, memory_bytes), reserve_limit_(reserve_limit_for(memory_bytes)) {}

PageAccess AddressSpace::access_of(int prot) noexcept {
  return {true, (prot & kProtWrite) != 0, (prot & kProtExec) != 0};
}

Error AddressSpace::refused(std::uint64_t start, std::uint64_t length, const std::string& why) const {
  return fail(Cause::guest_memory,
                    "guest memory: cannot reserve " + std::to_string(length) + " bytes at " + hex(start) + ": " + why);
}

bool AddressSpace::is_free(std::uint64_t start, std::uint64_t length) const {
  if (length == 0 || start < kUserLowest || start > kUserMapEnd || length > kUserMapEnd - start) return false;
  const std::uint64_t end = start + length;
  auto it = regions_.lower_bound(end);  // first region starting at or after end
  if (it == regions_.begin()) return true;
  --it;
  return it->second.end <= start;
}

std::optional<std::uint64_t> AddressSpace::find_free(std::uint64_t length, std::uint64_t below) const {
  if (length == 0 || below < length) return std::nullopt;
  std::uint64_t candidate_end = page_down(std::min(below, kUserMapEnd));
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
    return refused(start, length, "not page-aligned, outside the user half or taken");
  }
  if (length > reserve_limit_ - reserved_) {
    return refused(start, length, "the guest's address space is limited to " + std::to_string(reserve_limit_) +
                                      " bytes (" + std::to_string(reserved_) + " reserved)");
  }
  const std::uint64_t end = start + length;
  auto next = regions_.lower_bound(start);
  const bool joins_next = next != regions_.end() && next->first == end && next->second.prot == prot;
  const bool joins_prev = next != regions_.begin() && std::prev(next)->second.end == start &&
                          std::prev(next)->second.prot == prot;
  if (!joins_next && !joins_prev && regions_.size() >= kMaxRegions) {
    return refused(start, length, "the guest already has " + std::to_string(kMaxRegions) + " regions");
  }
  regions_.emplace(start, Region{end, prot});
  reserved_ += length;
  merge_at(end);
  merge_at(start);
  return {};
}

Result<void> AddressSpace::split_at(std::uint64_t gva) {
  auto it = regions_.upper_bound(gva);
  if (it == regions_.begin()) return {};
  --it;
  if (it->first < gva && it->second.end > gva) {
    if (regions_.size() >= kMaxRegions) {
      return fail(Cause::guest_memory, "cannot split the region at " + hex(it->first) +
                                                ": the guest already has " + std::to_string(kMaxRegions) + " regions");
    }
    regions_.emplace(gva, Region{it->second.end, it->second.prot});
    it->second.end = gva;
  }
  return {};
}

void AddressSpace::merge_at(std::uint64_t gva) {
  auto next = regions_.find(gva);
  if (next == regions_.end() || next == regions_.begin()) return;
  auto prev = std::prev(next);
  if (prev->second.end != gva || prev->second.prot != next->second.prot) return;
  prev->second.end = next->second.end;
  regions_.erase(next);
}

Result<void> AddressSpace::release(GuestMemory& memory, std::uint64_t start, std::uint64_t length) {
  const std::uint64_t end = start + length;
  if (auto split = split_at(start); !split) return split;
  if (auto split = split_at(end); !split) {
    merge_at(start);  // undo the first cut: nothing changed
    return split;
  }
  bool erased = false;
  for (auto it = regions_.lower_bound(start); it != regions_.end() && it->first < end;) {
    ++regions_visited_;
    reserved_ -= it->second.end - it->first;
    it = regions_.erase(it);
    erased = true;
  }
  if (!erased) return {};
  auto taken = tables_.unmap_range(memory, start, end);
  if (!taken) return taken.error();
  for (const Leaf& leaf : *taken) pages_.release(leaf.gpa);
  return {};
}

Result<bool> AddressSpace::protect(GuestMemory& memory, std::uint64_t start, std::uint64_t length, int prot) {
  const std::uint64_t end = start + length;
  for (std::uint64_t at = start; at < end;) {  // covered without holes?
    ++regions_visited_;
    const Region* region = region_at(at);
    if (region == nullptr) return false;
    at = region->end;
  }
  if (auto split = split_at(start); !split) return split.error();
  if (auto split = split_at(end); !split) {
    merge_at(start);
    return split.error();
  }
  for (auto it = regions_.lower_bound(start); it != regions_.end() && it->first < end; ++it) it->second.prot = prot;
  if (auto changed = tables_.protect_range(memory, start, end, access_of(prot)); !changed) return changed.error();
  // Every region in the range now has one protection: they and the edges merge.
  for (auto it = regions_.upper_bound(start); it != regions_.end() && it->first <= end;) {
    const std::uint64_t at = it->first;
    ++it;
    merge_at(at);
  }
  merge_at(start);
  return true;
}

Result<void> AddressSpace::move(GuestMemory& memory, std::uint64_t from, std::uint64_t length, std::uint64_t to) {
  const std::uint64_t end = from + length;
  for (std::uint64_t at = from; at < end;) {
    ++regions_visited_;
    const Region* region = region_at(at);
    if (region == nullptr) return fail(Cause::guest_memory, "nothing to move at " + hex(at));
    at = region->end;
  }
  if (!is_free(to, length)) return refused(to, length, "not page-aligned, outside the user half or taken");
  if (auto split = split_at(from); !split) return split;
  if (auto split = split_at(end); !split) {
    merge_at(from);
    return split;
  }
  // The regions move as they are: each keeps its protection (never the first one's for all).
  std::vector<std::pair<std::uint64_t, Region>> moved;
  for (auto it = regions_.lower_bound(from); it != regions_.end() && it->first < end;) {
    moved.emplace_back(it->first - from + to, Region{it->second.end - from + to, it->second.prot});
    it = regions_.erase(it);
  }
  auto taken = tables_.unmap_range(memory, from, end);
  if (!taken) return taken.error();
  regions_.insert(moved.begin(), moved.end());
  merge_at(to);
  merge_at(to + length);
  for (std::size_t i = 0; i < taken->size(); ++i) {
    const Leaf& leaf = (*taken)[i];
    const std::uint64_t at = leaf.gva - from + to;
    auto mapped = tables_.map_page(memory, pages_, at, leaf.gpa, access_of(region_at(at)->prot));
    if (!mapped) {  // no page left for a table: the pages not yet mapped go back to the pool
      for (std::size_t j = i; j < taken->size(); ++j) pages_.release((*taken)[j].gpa);
      return mapped;
    }
  }
  return {};
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
  if (region == nullptr) return fail(Cause::guest_memory, "no region at " + hex(gva));
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
    return fail(Cause::guest_fault, std::string(what) + " unmapped memory at " + hex(gva));
  }
  const bool allowed = cause.fetch ? (region->prot & kProtExec) != 0
                       : cause.write ? (region->prot & kProtWrite) != 0
                                     : (region->prot & kProtRead) != 0;
  if (!allowed || cause.present) {
    return fail(Cause::guest_fault, std::string(what) + " memory at " + hex(gva) +
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
