// FixedArena::over_zeroed: an arena begun over memory that is already zero writes only its
// bookkeeping's non-zero fields, and behaves exactly as one made by `over`.
#include <doctest/doctest.h>

#include <sys/mman.h>

#include <vector>

#include "sandbox/guest/arena.hpp"

using sojourn::sandbox::guest::FixedArena;

namespace {

struct Mapping {
  explicit Mapping(std::size_t length) : size(length) {
    at = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  ~Mapping() {
    if (at != MAP_FAILED) ::munmap(at, size);
  }
  // Pages of the mapping the process has touched (mincore: resident).
  std::size_t resident() const {
    std::vector<unsigned char> pages(size / 4096);
    if (::mincore(at, size, pages.data()) != 0) return ~std::size_t{0};
    std::size_t n = 0;
    for (unsigned char p : pages) n += p & 1u;
    return n;
  }
  std::size_t size;
  void* at;
};

}  // namespace

TEST_CASE("an arena begun over zero memory touches one page of its bookkeeping and allocates as `over` does") {
  constexpr std::size_t kBytes = 1u << 20;
  Mapping zeroed(kBytes);
  Mapping written(kBytes);
  REQUIRE(zeroed.at != MAP_FAILED);
  REQUIRE(written.at != MAP_FAILED);
  FixedArena fresh = FixedArena::over_zeroed(zeroed.at, kBytes);
  // The header spans several pages (its exact-size lists); only the first is written.
  CHECK(zeroed.resident() == 1);
  FixedArena plain = FixedArena::over(written.at, kBytes);
  CHECK(written.resident() >= 4);  // `over` writes the whole header
  CHECK(fresh.high_water() == plain.high_water());
  CHECK(fresh.size() == plain.size());

  // The same calls give blocks at the same offsets, including after frees (the lists work).
  const auto offset = [](const FixedArena& arena, void* block) {
    return reinterpret_cast<std::uintptr_t>(block) - arena.base();
  };
  std::vector<void*> a;
  std::vector<void*> b;
  for (std::size_t size : {24, 100, 4000, 40000, 24, 100}) {
    a.push_back(fresh.allocate(size));
    b.push_back(plain.allocate(size));
    REQUIRE(a.back() != nullptr);
    CHECK(offset(fresh, a.back()) == offset(plain, b.back()));
  }
  fresh.release(a[1], 100);
  plain.release(b[1], 100);
  fresh.release(a[3], 40000);
  plain.release(b[3], 40000);
  for (std::size_t size : {100, 40000, 16}) {
    void* x = fresh.allocate(size);
    void* y = plain.allocate(size);
    REQUIRE(x != nullptr);
    CHECK(offset(fresh, x) == offset(plain, y));
  }
  CHECK(fresh.high_water() == plain.high_water());
  CHECK(FixedArena::adopt(zeroed.at, kBytes).ok());  // its bookkeeping reads as an arena's
}
