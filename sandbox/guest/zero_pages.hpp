// Which free pages of a restored arena are still zero (FixedArena::track_zero_pages): one bit
// a page, cleared whenever the allocator takes back a block over any byte of the page or writes
// a list node into it. Outside the arena's region, so a heap image never carries it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sojourn::sandbox::guest {

class ZeroPages {
 public:
  static constexpr std::size_t kPage = 4096;

  // Starts over for the region at `base` of `pages` pages, every page remembered as zero
  // (forget_page() and forget() then make the truth); false (nothing remembered) without memory.
  bool start(std::uintptr_t base, std::size_t pages) noexcept;
  void stop() noexcept;
  bool active() const noexcept { return base_ != 0; }
  bool covers(std::uintptr_t base) const noexcept { return base_ != 0 && base_ == base; }
  // Forgets every page [at, at + bytes) touches (nothing outside the region tracked).
  void forget(const void* at, std::size_t bytes) noexcept {
    if (base_ != 0) forget_range(reinterpret_cast<std::uintptr_t>(at), bytes);
  }
  void forget_page(std::size_t page) noexcept;
  bool zero(std::size_t page) const noexcept {
    return page < pages_ && ((bits_[page / 64] >> (page % 64)) & 1u) != 0;
  }
  std::size_t pages() const noexcept { return pages_; }
  // Keeps only the pages also set in `keep` (a bitmap from blank(), or nothing is kept).
  void intersect(const std::vector<std::uint64_t>& keep) noexcept;
  // An all-clear bitmap of this one's size (for intersect); empty without memory.
  std::vector<std::uint64_t> blank() const noexcept;

 private:
  void forget_range(std::uintptr_t at, std::size_t bytes) noexcept;
  std::uintptr_t base_ = 0;  // 0: nothing tracked
  std::size_t pages_ = 0;
  std::vector<std::uint64_t> bits_;  // 1: known zero
};

// The one tracker of the process (a guest has one arena); a plain global, so that the
// allocator's check costs no guard.
extern ZeroPages g_zero_pages;
inline ZeroPages& zero_pages() noexcept { return g_zero_pages; }

inline void set_bit(std::vector<std::uint64_t>& bits, std::size_t i) noexcept { bits[i / 64] |= std::uint64_t{1} << (i % 64); }

}  // namespace sojourn::sandbox::guest
