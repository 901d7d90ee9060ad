// A large heap image is sealed into the buffer of one let go before (scratch.hpp's kept image
// buffer): the same bytes as in a fresh buffer, none of the old ones, and the buffer comes back
// when the sealed image is let go (shared_image).
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "sandbox/image/heap_image.hpp"
#include "sandbox/image/scratch.hpp"

namespace image = sojourn::sandbox::image;

namespace {

constexpr std::uint64_t kBase = 0x1000'0000'0000;
constexpr std::uint64_t kArena = 64ull << 20;

image::ImageSource source(image::Codec codec) {
  image::ImageSource s;
  s.guest_build.fill(7);
  s.arena_base = kBase;
  s.arena_bytes = kArena;
  s.agent_handle = kBase + 0x1230;
  s.codec = codec;
  return s;
}

// `pages` pages, every third one all zero (left out), the others random (incompressible).
std::vector<std::uint8_t> span_of(std::size_t pages, std::uint32_t seed) {
  std::vector<std::uint8_t> span(pages * image::kPageBytes, 0);
  std::mt19937 rng(seed);
  for (std::size_t p = 0; p < pages; ++p) {
    if (p % 3 == 2) continue;
    for (std::size_t i = 0; i < image::kPageBytes; i += 4) {
      const std::uint32_t v = rng();
      for (int b = 0; b < 4; ++b) span[p * image::kPageBytes + i + b] = static_cast<std::uint8_t>(v >> (8 * b));
    }
  }
  return span;
}

void drop_kept_buffer() {
  // Taken and freed here: nothing kept.
  (void)image::take_image_buffer(image::kImageBufferMin);
  REQUIRE(image::kept_image_buffer() == 0);
}

}  // namespace

TEST_CASE("a large image sealed into a kept buffer is byte for byte the one sealed into a fresh buffer") {
  const std::vector<std::uint8_t> span = span_of(2048, 11);  // 8 MB, ~5.3 MB kept
  for (image::Codec codec : {image::Codec::lz4, image::Codec::zstd, image::Codec::stored}) {
    CAPTURE(image::codec_name(codec));
    drop_kept_buffer();
    auto fresh = image::take_image(source(codec), span);
    REQUIRE(fresh);
    REQUIRE(fresh->size() >= image::kImageBufferMin);

    // A kept buffer full of another image's bytes, larger than any bound of this one.
    std::vector<std::uint8_t> old(span.size() * 2, 0xEE);
    const std::uint8_t* old_data = old.data();
    image::give_image_buffer(std::move(old));
    REQUIRE(image::kept_image_buffer() >= span.size() * 2);

    auto reused = image::take_image(source(codec), span);
    REQUIRE(reused);
    CHECK(reused->data() == old_data);          // sealed into the kept buffer
    CHECK(image::kept_image_buffer() == 0);     // which is no longer kept
    CHECK(*reused == *fresh);                   // the same image, none of the old bytes in it
    CHECK(image::digest_hex(*reused) == image::digest_hex(*fresh));
    CHECK(image::has_sealed_digest(*reused, image::digest_hex(*fresh)));
  }
}

TEST_CASE("a sealed image let go gives its buffer to the next image sealed") {
  drop_kept_buffer();
  const std::vector<std::uint8_t> first = span_of(2048, 21);
  const std::vector<std::uint8_t> second = span_of(2048, 22);
  auto sealed = image::take_image(source(image::Codec::lz4), first);
  REQUIRE(sealed);
  const std::uint8_t* data = sealed->data();
  auto held = image::shared_image(std::move(*sealed));
  CHECK(image::kept_image_buffer() == 0);  // held: not kept yet
  held.reset();
  CHECK(image::kept_image_buffer() >= image::kImageBufferMin);

  auto next = image::take_image(source(image::Codec::lz4), second);
  REQUIRE(next);
  CHECK(next->data() == data);
  drop_kept_buffer();
  auto alone = image::take_image(source(image::Codec::lz4), second);
  REQUIRE(alone);
  CHECK(*next == *alone);
}

TEST_CASE("a small image is never sealed into the kept buffer") {
  drop_kept_buffer();
  image::give_image_buffer(std::vector<std::uint8_t>(image::kImageBufferMin * 2, 0xEE));
  const std::size_t kept = image::kept_image_buffer();
  REQUIRE(kept >= image::kImageBufferMin * 2);
  auto small = image::take_image(source(image::Codec::lz4), span_of(64, 31));  // 256 KB
  REQUIRE(small);
  CHECK(small->size() < image::kImageBufferMin);
  CHECK(image::kept_image_buffer() == kept);  // still kept, for a large one
  drop_kept_buffer();
}

TEST_CASE("a mid-sized image is sealed into the kept mid-sized buffer, byte for byte, beside the large one") {
  drop_kept_buffer();
  for (int i = 0; i < 2; ++i) (void)image::take_image_buffer(image::kSmallImageBufferMin);  // nothing mid-sized kept
  REQUIRE(image::kept_small_image_buffer() == 0);
  image::give_image_buffer(std::vector<std::uint8_t>(image::kImageBufferMin * 2, 0xEE));
  const std::size_t large = image::kept_image_buffer();
  REQUIRE(large >= image::kImageBufferMin * 2);
  const std::vector<std::uint8_t> first = span_of(384, 41);  // 1.5 MB, 1 MB kept
  for (image::Codec codec : {image::Codec::lz4, image::Codec::zstd, image::Codec::stored}) {
    CAPTURE(image::codec_name(codec));
    auto fresh = image::take_image(source(codec), first);
    REQUIRE(fresh);
    REQUIRE(fresh->size() >= image::kSmallImageBufferMin);
    REQUIRE(fresh->size() < image::kImageBufferMin);
    const std::uint8_t* data = fresh->data();
    auto held = image::shared_image(std::move(*fresh));
    const std::vector<std::uint8_t> alone(held->begin(), held->end());
    CHECK(image::kept_small_image_buffer() == 0);  // held: not kept yet
    held.reset();
    CHECK(image::kept_small_image_buffer() >= alone.size());
    CHECK(image::kept_image_buffer() == large);  // the large one stays
    // The next one of its class (the same heap, then another) takes it: the same bytes as sealed
    // into a fresh buffer, none of the old ones.
    auto again = image::take_image(source(codec), first);
    REQUIRE(again);
    CHECK(again->data() == data);
    CHECK(*again == alone);
    CHECK(image::kept_small_image_buffer() == 0);
    const std::vector<std::uint8_t> other = span_of(300, 43);
    image::give_image_buffer(std::move(*again));
    auto reused = image::take_image(source(codec), other);
    REQUIRE(reused);
    CHECK(reused->data() == data);
    (void)image::take_image_buffer(image::kSmallImageBufferMin);  // drops the kept one
    auto apart = image::take_image(source(codec), other);
    REQUIRE(apart);
    CHECK(*reused == *apart);
    image::RestoreRules rules;
    rules.guest_build.fill(7);
    rules.arena_base = kBase;
    rules.max_arena_bytes = kArena;
    auto opened = image::open_image(*reused, rules);
    REQUIRE(opened);
    CHECK(opened->used == other);
  }
  // A small buffer is not kept; a mid-sized request never takes the large one.
  image::give_image_buffer(std::vector<std::uint8_t>(image::kSmallImageBufferMin - 1));
  CHECK(image::kept_small_image_buffer() == 0);
  CHECK(image::take_image_buffer(image::kSmallImageBufferMin).capacity() == 0);
  CHECK(image::kept_image_buffer() == large);
  drop_kept_buffer();
}

TEST_CASE("two mid-sized buffers are kept, the smaller one given way to a larger third") {
  for (int i = 0; i < 2; ++i) (void)image::take_image_buffer(image::kSmallImageBufferMin);
  REQUIRE(image::kept_small_image_buffer() == 0);
  constexpr std::size_t kMid = image::kSmallImageBufferMin;
  std::vector<std::uint8_t> a(kMid), b(kMid * 2), c(kMid * 3);
  const std::uint8_t* pb = b.data();
  const std::uint8_t* pc = c.data();
  image::give_image_buffer(std::move(a));
  image::give_image_buffer(std::move(b));
  CHECK(image::kept_small_image_buffer() == kMid * 2);
  image::give_image_buffer(std::move(c));  // a goes
  CHECK(image::kept_small_image_buffer() == kMid * 3);
  auto fits = image::take_image_buffer(kMid + 1);  // the smallest that fits: b
  CHECK(fits.data() == pb);
  auto too_small = image::take_image_buffer(kMid * 3 + 1);  // none fits
  CHECK(too_small.capacity() == 0);
  auto last = image::take_image_buffer(kMid);
  CHECK(last.data() == pc);
  CHECK(image::take_image_buffer(kMid).capacity() == 0);  // a was freed, not kept
  CHECK(image::kept_small_image_buffer() == 0);
}
