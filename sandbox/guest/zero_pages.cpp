#include "sandbox/guest/zero_pages.hpp"

#include <algorithm>
#include <new>

namespace sojourn::sandbox::guest {

bool ZeroPages::start(std::uintptr_t base, std::size_t pages) noexcept {
  stop();
  try {
    bits_.assign((pages + 63) / 64, ~std::uint64_t{0});
  } catch (const std::bad_alloc&) {
    return false;
  }
  if (pages % 64 != 0) bits_.back() = (std::uint64_t{1} << (pages % 64)) - 1;
  base_ = base;
  pages_ = pages;
  return true;
}

void ZeroPages::stop() noexcept {
  base_ = 0;
  pages_ = 0;
  bits_.clear();
}

void ZeroPages::forget_page(std::size_t page) noexcept {
  if (page < pages_) bits_[page / 64] &= ~(std::uint64_t{1} << (page % 64));
}

void ZeroPages::forget_range(std::uintptr_t at, std::size_t bytes) noexcept {
  if (bytes == 0 || at < base_) return;
  const std::size_t first = (at - base_) / kPage;
  const std::size_t last = std::min(pages_, (at - base_ + bytes - 1) / kPage + 1);
  for (std::size_t page = first; page < last; ++page) {
    if (page % 64 == 0 && page + 64 <= last) {
      bits_[page / 64] = 0;
      page += 63;
    } else {
      bits_[page / 64] &= ~(std::uint64_t{1} << (page % 64));
    }
  }
}

void ZeroPages::intersect(const std::vector<std::uint64_t>& keep) noexcept {
  if (keep.size() != bits_.size()) {
    stop();
    return;
  }
  for (std::size_t i = 0; i < bits_.size(); ++i) bits_[i] &= keep[i];
}

std::vector<std::uint64_t> ZeroPages::blank() const noexcept {
  try {
    return std::vector<std::uint64_t>(bits_.size(), 0);
  } catch (const std::bad_alloc&) {
    return {};
  }
}

constinit ZeroPages g_zero_pages;

}  // namespace sojourn::sandbox::guest
