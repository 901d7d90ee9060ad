// The heap image's sealing and host-side checks (sandbox/image): what a restoring host refuses
// before any byte reaches a guest, and that what it accepts is the span that was taken.
#include "sandbox/image/heap_image.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "tests/support/error_checks.hpp"

namespace image = sojourn::sandbox::image;
using sojourn::Errc;

namespace {

constexpr std::uint64_t kBase = 0x1000'0000'0000;
constexpr std::uint64_t kArena = 64ull << 20;

image::ImageSource source_with_build(std::uint8_t build) {
  image::ImageSource s;
  s.guest_build.fill(build);
  s.arena_base = kBase;
  s.arena_bytes = kArena;
  s.agent_handle = kBase + 0x1230;
  return s;
}

image::RestoreRules rules_with_build(std::uint8_t build, std::uint64_t max_arena = kArena) {
  image::RestoreRules r;
  r.guest_build.fill(build);
  r.arena_base = kBase;
  r.max_arena_bytes = max_arena;
  return r;
}

// `pages` pages where every third is zero and the others hold pseudo-random bytes.
std::vector<std::uint8_t> span_of(std::size_t pages, unsigned seed = 7) {
  std::vector<std::uint8_t> used(pages * image::kPageBytes);
  std::mt19937 rng(seed);
  for (std::size_t p = 0; p < pages; ++p) {
    if (p % 3 == 1) continue;
    for (std::size_t i = 0; i < image::kPageBytes; i += 4) {
      const std::uint32_t r = rng();
      std::memcpy(used.data() + p * image::kPageBytes + i, &r, 4);
    }
  }
  return used;
}

}  // namespace

TEST_CASE("a heap image restores the span it was taken from, with its header") {
  const std::vector<std::uint8_t> used = span_of(10);
  image::ImageStats stats;
  auto taken = image::take_image(source_with_build(1), used, &stats);
  REQUIRE(taken);
  CHECK(stats.raw_bytes == used.size());
  CHECK(stats.kept_pages == 7);  // pages 1, 4, 7 are zero and left out
  CHECK(stats.image_bytes == taken->size());
  auto opened = image::open_image(*taken, rules_with_build(1));
  REQUIRE(opened);
  CHECK(opened->used == used);
  CHECK(opened->header.agent_handle == kBase + 0x1230);
  CHECK(opened->header.arena_bytes == kArena);
  CHECK(opened->header.used_bytes == used.size());
}

TEST_CASE("zero pages do not travel: a mostly empty 16 MB span makes a small image") {
  std::vector<std::uint8_t> used(16u << 20);
  used[5 * image::kPageBytes + 17] = 0x5a;
  image::ImageStats stats;
  auto taken = image::take_image(source_with_build(1), used, &stats);
  REQUIRE(taken);
  CHECK(stats.kept_pages == 1);
  CHECK(taken->size() < 8 * 1024);
  auto opened = image::open_image(*taken, rules_with_build(1));
  REQUIRE(opened);
  CHECK(opened->used == used);
}

TEST_CASE("a span of partial pages or larger than the arena is not imaged") {
  std::vector<std::uint8_t> partial(image::kPageBytes + 1);
  CHECK_ERROR(image::take_image(source_with_build(1), partial), Errc::invalid_argument, "whole pages");
  image::ImageSource small = source_with_build(1);
  small.arena_bytes = image::kPageBytes;
  CHECK_ERROR(image::take_image(small, span_of(2)), Errc::invalid_argument, "arena of 4096");
}

TEST_CASE("an image from another guest build is refused with both build ids") {
  auto taken = image::take_image(source_with_build(0xab), span_of(3));
  REQUIRE(taken);
  auto opened = image::open_image(*taken, rules_with_build(0xcd));
  CHECK_ERROR(opened, Errc::sandbox_refused, "image from guest build abababababababab, this node runs cdcdcdcdcdcdcdcd");
}

TEST_CASE("a tampered image is refused by its hash") {
  auto taken = image::take_image(source_with_build(1), span_of(6));
  REQUIRE(taken);
  SUBCASE("a payload byte") { (*taken)[taken->size() - 3] ^= 0x40; }
  SUBCASE("the agent handle in the header") { (*taken)[68] ^= 0x01; }
  CHECK_ERROR(image::open_image(*taken, rules_with_build(1)), Errc::sandbox_refused, "hash mismatch");
}

TEST_CASE("sizes over the memory quota are refused before decompressing") {
  auto taken = image::take_image(source_with_build(1), span_of(4));
  REQUIRE(taken);
  // Within the rules the image opens; under a quota smaller than its arena it is refused, and so
  // is the same image whose payload is garbage: the size check comes first.
  CHECK(image::open_image(*taken, rules_with_build(1)));
  CHECK_ERROR(image::open_image(*taken, rules_with_build(1, kArena / 2)), Errc::sandbox_refused,
              "above the memory quota's 33554432 bytes");
  for (std::size_t i = image::kHeaderBytes; i < taken->size(); ++i) (*taken)[i] = 0xff;
  CHECK_ERROR(image::open_image(*taken, rules_with_build(1, kArena / 2)), Errc::sandbox_refused, "memory quota");
}

TEST_CASE("a payload declared larger than its span is refused before decompressing") {
  auto taken = image::take_image(source_with_build(1), span_of(4));
  REQUIRE(taken);
  // payload_bytes (offset 76) claims a gigabyte: refused from the header alone, even resealed.
  const std::uint64_t huge = 1ull << 30;
  std::memcpy(taken->data() + 76, &huge, 8);
  image::reseal(*taken);
  CHECK_ERROR(image::open_image(*taken, rules_with_build(1)), Errc::sandbox_refused, "declares a payload of 1073741824");
}

TEST_CASE("a corrupt but well-hashed image is refused when its structure is wrong") {
  auto taken = image::take_image(source_with_build(1), span_of(9));
  REQUIRE(taken);
  SUBCASE("compressed bytes that are not zstd") {
    for (std::size_t i = image::kHeaderBytes; i < taken->size(); ++i) (*taken)[i] = static_cast<std::uint8_t>(i * 31);
    image::reseal(*taken);
    CHECK_ERROR(image::open_image(*taken, rules_with_build(1)), Errc::sandbox_refused, "heap image:");
  }
  SUBCASE("a truncated payload") {
    taken->resize(taken->size() - 10);
    image::reseal(*taken);
    CHECK_ERROR(image::open_image(*taken, rules_with_build(1)), Errc::sandbox_refused, "does not decompress");
  }
  SUBCASE("a header cut short") {
    taken->resize(image::kHeaderBytes - 1);
    CHECK_ERROR(image::open_image(*taken, rules_with_build(1)), Errc::sandbox_refused, "shorter than its header");
  }
  SUBCASE("another format version") {
    (*taken)[8] = 9;
    image::reseal(*taken);
    CHECK_ERROR(image::open_image(*taken, rules_with_build(1)), Errc::sandbox_refused, "format version 9");
  }
}

TEST_CASE("an image for an arena elsewhere is refused") {
  auto taken = image::take_image(source_with_build(1), span_of(2));
  REQUIRE(taken);
  image::RestoreRules rules = rules_with_build(1);
  rules.arena_base = kBase * 2;
  CHECK_ERROR(image::open_image(*taken, rules), Errc::sandbox_refused, "arena at 0x100000000000");
}

TEST_CASE("the guest build id is the SHA-256 of the executable") {
  auto a = image::build_id_of("/proc/self/exe");
  REQUIRE(a);
  CHECK(image::hex(*a).size() == 64);
  CHECK(*a != std::array<std::uint8_t, 32>{});
  CHECK_ERROR(image::build_id_of("/nonexistent/sojourn-guest"), Errc::internal, "/nonexistent/sojourn-guest");
}
