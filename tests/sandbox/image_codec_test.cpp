// The heap image's codecs (sandbox/image): each one round-trips a span, names itself in the
// header, and is held to the same checks: a payload that does not decode, a codec this node does
// not know, and sizes over the quota (refused before a byte is decoded).
#include <doctest/doctest.h>

#include <algorithm>
#include <utility>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/image/heap_image.hpp"
#include "sandbox/image/scratch.hpp"
#include "tests/support/error_checks.hpp"

namespace image = sojourn::sandbox::image;
using sojourn::Errc;

namespace {

constexpr std::uint64_t kBase = 0x1000'0000'0000;
constexpr std::uint64_t kArena = 64ull << 20;
constexpr image::Codec kCodecs[] = {image::Codec::stored, image::Codec::zstd, image::Codec::lz4};

image::ImageSource source_for(image::Codec codec) {
  image::ImageSource s;
  s.codec = codec;
  s.guest_build.fill(1);
  s.arena_base = kBase;
  s.arena_bytes = kArena;
  s.agent_handle = kBase + 0x40;
  return s;
}

image::RestoreRules rules(std::uint64_t max_arena = kArena) {
  image::RestoreRules r;
  r.guest_build.fill(1);
  r.arena_base = kBase;
  r.max_arena_bytes = max_arena;
  return r;
}

// `pages` pages like a Lua heap's: every fourth all zero, the others words of a small vocabulary
// (repeats both compressors find) with a random byte here and there.
std::vector<std::uint8_t> heap_like(std::size_t pages) {
  static const char* const kWords[] = {"agent", "state", "table", "next", "value", "go", "peer", "hop"};
  std::vector<std::uint8_t> used(pages * image::kPageBytes);
  std::mt19937 rng(11);
  for (std::size_t p = 0; p < pages; ++p) {
    if (p % 4 == 2) continue;
    std::uint8_t* page = used.data() + p * image::kPageBytes;
    for (std::size_t i = 0; i < image::kPageBytes;) {
      const std::string word = kWords[rng() % 8] + std::string(1, static_cast<char>(rng()));
      const std::size_t n = std::min(word.size(), image::kPageBytes - i);
      std::memcpy(page + i, word.data(), n);
      i += n;
    }
  }
  return used;
}

std::string message_of(const auto& result) { return result ? std::string("(no error)") : result.error().message; }

}  // namespace

TEST_CASE("every codec restores the span it was taken from and names itself in the header") {
  const std::vector<std::uint8_t> used = heap_like(300);
  std::uint64_t bytes[3] = {};
  for (image::Codec codec : kCodecs) {
    CAPTURE(image::codec_name(codec));
    image::ImageStats stats;
    auto taken = image::take_image(source_for(codec), used, &stats);
    REQUIRE(taken);
    CHECK(stats.codec == codec);
    CHECK(stats.image_bytes == taken->size());
    bytes[static_cast<int>(codec)] = taken->size();
    auto header = image::peek_header(*taken);
    REQUIRE(header);
    CHECK(header->codec == codec);
    auto opened = image::open_image(*taken, rules());
    REQUIRE(opened);
    CHECK(opened->header.codec == codec);
    CHECK(opened->header.agent_handle == kBase + 0x40);
    CHECK(opened->used == used);
    CHECK(image::has_digest(*taken, image::digest_hex(*taken)));
  }
  // Stored keeps every kept page's byte; the compressors do better, zstd best.
  const std::uint64_t kept_payload = image::page_map_bytes(used.size()) + 225 * image::kPageBytes;
  CHECK(bytes[0] == image::kHeaderBytes + kept_payload);
  CHECK(bytes[2] < bytes[0]);
  CHECK(bytes[1] < bytes[2]);
  CHECK(image::codec_name(image::Codec::lz4) == "lz4");
  CHECK(image::parse_codec("stored") == image::Codec::stored);
  CHECK_FALSE(image::parse_codec("gzip").has_value());
}

TEST_CASE("every codec streams through an opener in pieces, and through a page reader") {
  const std::vector<std::uint8_t> used = heap_like(700);  // over two pieces of kReadPiece
  for (image::Codec codec : kCodecs) {
    CAPTURE(image::codec_name(codec));
    auto whole = image::take_image(source_for(codec), used);
    REQUIRE(whole);
    auto opener = image::ImageOpener::check(*whole, rules());
    REQUIRE(opener);
    std::vector<std::uint8_t> pages(opener->kept_bytes());
    REQUIRE(pages.size() > 3 * image::kPageBytes);
    REQUIRE(opener->next(std::span(pages).first(3 * image::kPageBytes)));
    REQUIRE(opener->next(std::span(pages).subspan(3 * image::kPageBytes)));
    CHECK(opener->finish());
    // The same pages read through a PageReader seal to an image that opens to the same span.
    std::size_t at = 0;
    auto read = image::take_image(source_for(codec), used.size(), opener->page_map(), [&](std::span<std::uint8_t> into) {
      REQUIRE(at + into.size() <= pages.size());
      std::memcpy(into.data(), pages.data() + at, into.size());
      at += into.size();
      return sojourn::Result<void>{};
    });
    REQUIRE(read);
    auto opened = image::open_image(*read, rules());
    REQUIRE(opened);
    CHECK(opened->used == used);
  }
}

TEST_CASE("a page reader's pieces, read ahead of the codec, seal the same bytes as the whole span") {
  // 1500 pages, 1125 kept: four whole pieces of kReadPiece and a short one. The next piece is
  // read while the codec works on the one before; the image must not change for it.
  const std::vector<std::uint8_t> used = heap_like(1500);
  for (image::Codec codec : kCodecs) {
    CAPTURE(image::codec_name(codec));
    auto whole = image::take_image(source_for(codec), used);
    REQUIRE(whole);
    auto opener = image::ImageOpener::check(*whole, rules());
    REQUIRE(opener);
    std::vector<std::uint8_t> pages(opener->kept_bytes());
    REQUIRE(opener->next(pages));
    REQUIRE(opener->finish());
    REQUIRE(pages.size() > 4 * image::kReadPiece);
    std::size_t at = 0;
    int calls = 0;
    const std::uint8_t* last = nullptr;
    bool alternated = true;
    auto read = image::take_image(source_for(codec), used.size(), opener->page_map(), [&](std::span<std::uint8_t> into) {
      REQUIRE(at + into.size() <= pages.size());
      // Never the buffer the piece before went into: the codec may still be reading that one.
      alternated = alternated && into.data() != last;
      last = into.data();
      std::memcpy(into.data(), pages.data() + at, into.size());
      at += into.size();
      ++calls;
      return sojourn::Result<void>{};
    });
    REQUIRE(read);
    CHECK(calls == 5);
    CHECK(at == pages.size());
    CHECK(alternated);
    // The same bytes, hence the same hash, as the kept pages sealed in one piece (the same
    // block boundaries: a piece is whole blocks).
    auto at_once = image::take_image(source_for(codec), image::KeptPages{used.size(), opener->page_map(), pages});
    REQUIRE(at_once);
    CHECK(*read == *at_once);
    // A reader failing on its third piece: its error, and no read after it.
    calls = 0;
    auto failed = image::take_image(source_for(codec), used.size(), opener->page_map(), [&](std::span<std::uint8_t>) {
      ++calls;
      return calls == 3 ? sojourn::Result<void>(sojourn::make_error(sojourn::Errc::guest_crashed, "guest crashed: gone"))
                        : sojourn::Result<void>{};
    });
    REQUIRE_FALSE(failed);
    CHECK(failed.error().code == sojourn::Errc::guest_crashed);
    CHECK(failed.error().message == "guest crashed: gone");
    CHECK(calls == 3);
  }
}

TEST_CASE("a corrupt but well-hashed lz4 or stored payload is refused, never decoded past its bounds") {
  const std::vector<std::uint8_t> used = heap_like(40);
  for (image::Codec codec : {image::Codec::lz4, image::Codec::stored}) {
    CAPTURE(image::codec_name(codec));
    auto taken = image::take_image(source_for(codec), used);
    REQUIRE(taken);
    // Bytes after the frame's header scrambled. A scrambled stored payload is still a payload:
    // only its page map can give it away; either way what is restored never passes its span.
    std::vector<std::uint8_t> scrambled = *taken;
    for (std::size_t i = image::kHeaderBytes + 24; i < scrambled.size(); ++i) scrambled[i] = static_cast<std::uint8_t>(i * 131);
    image::reseal(scrambled);
    auto opened = image::open_image(scrambled, rules());
    if (codec == image::Codec::lz4) CHECK_ERROR(opened, Errc::sandbox_refused, "refused by the sandbox: heap image:");
    if (opened) CHECK(opened->used.size() == used.size());
    // A payload cut short, and one with a byte after its end.
    std::vector<std::uint8_t> cut = *taken;
    cut.erase(cut.end() - 100, cut.end());
    image::reseal(cut);
    CHECK_ERROR(image::open_image(cut, rules()), Errc::sandbox_refused, "refused by the sandbox: heap image:");
    std::vector<std::uint8_t> longer = *taken;
    longer.push_back(0);
    image::reseal(longer);
    CHECK_ERROR(image::open_image(longer, rules()), Errc::sandbox_refused, "refused by the sandbox: heap image:");
  }
}

TEST_CASE("an lz4 frame that declares another size than the header is refused before decoding") {
  auto taken = image::take_image(source_for(image::Codec::lz4), heap_like(8));
  REQUIRE(taken);
  std::uint64_t payload = 0;
  std::memcpy(&payload, taken->data() + 80, 8);
  payload -= image::kPageBytes;  // still a whole number of pages, and still fits the span
  std::memcpy(taken->data() + 80, &payload, 8);
  image::reseal(*taken);
  CHECK(message_of(image::open_image(*taken, rules())) ==
        "refused by the sandbox: heap image: the compressed payload does not declare the header's size");
}

TEST_CASE("a codec this node does not read is refused with its number") {
  auto taken = image::take_image(source_for(image::Codec::lz4), heap_like(4));
  REQUIRE(taken);
  (*taken)[12] = 7;  // the codec field, right after the version
  image::reseal(*taken);
  const std::string expected = "refused by the sandbox: heap image: codec 7 is not one this node reads (stored, zstd, lz4)";
  CHECK(message_of(image::open_image(*taken, rules())) == expected);
  CHECK(message_of(image::peek_header(*taken)) == expected);
  CHECK_ERROR(image::open_image(*taken, rules()), Errc::sandbox_refused, "codec 7");
}

TEST_CASE("with every codec, sizes over the memory quota are refused before a byte is decoded") {
  const std::vector<std::uint8_t> used = heap_like(16);
  for (image::Codec codec : kCodecs) {
    CAPTURE(image::codec_name(codec));
    auto taken = image::take_image(source_for(codec), used);
    REQUIRE(taken);
    CHECK(image::open_image(*taken, rules()));
    // The payload turned to garbage: the quota's refusal comes first, from the header alone.
    for (std::size_t i = image::kHeaderBytes; i < taken->size(); ++i) (*taken)[i] = 0xff;
    image::reseal(*taken);
    CHECK(message_of(image::open_image(*taken, rules(kArena / 2))) ==
          "refused by the sandbox: heap image declares an arena of 67108864 bytes, above the memory quota's 33554432 bytes");
  }
}

TEST_CASE("lz4 seals a large span on two threads into one frame that restores it byte for byte") {
  // Over several batches of blocks, with incompressible pages (stored blocks) among compressible
  // ones, fed through a page reader in pieces that do not fall on block boundaries.
  std::vector<std::uint8_t> used = heap_like(2600);  // ~10 MB of span
  std::mt19937_64 rng(5);
  for (std::size_t p = 700; p < 1400; ++p) {
    if (p % 4 == 2) continue;
    for (std::size_t i = 0; i < image::kPageBytes; i += 8) {
      const std::uint64_t v = rng();
      std::memcpy(used.data() + p * image::kPageBytes + i, &v, 8);
    }
  }
  auto whole = image::take_image(source_for(image::Codec::lz4), used);
  REQUIRE(whole);
  auto opened = image::open_image(*whole, rules());
  REQUIRE(opened);
  CHECK(opened->used == used);
  auto opener = image::ImageOpener::check(*whole, rules());
  REQUIRE(opener);
  std::vector<std::uint8_t> pages(opener->kept_bytes());
  REQUIRE(opener->next(pages));
  REQUIRE(opener->finish());
  // Two sealings at once (one gets the helper, the other compresses alone) give the same bytes.
  std::vector<std::uint8_t> images[2];
  const auto seal = [&](std::vector<std::uint8_t>& out) {
    std::size_t at = 0;
    auto read = image::take_image(source_for(image::Codec::lz4), used.size(), opener->page_map(),
                                  [&](std::span<std::uint8_t> into) {
                                    const std::size_t n = std::min(into.size(), pages.size() - at);
                                    std::memcpy(into.data(), pages.data() + at, n);
                                    at += n;
                                    return sojourn::Result<void>{};
                                  });
    if (read) out = std::move(*read);
  };
  std::thread other([&] { seal(images[1]); });
  seal(images[0]);
  other.join();
  for (const auto& sealed : images) {
    REQUIRE(!sealed.empty());
    CHECK(sealed == images[0]);
    auto again = image::open_image(sealed, rules());
    REQUIRE(again);
    CHECK(again->used == used);
  }
  // The incompressible stretch is stored, not expanded: at most a size word per block over it.
  CHECK(images[0].size() < image::kHeaderBytes + image::page_map_bytes(used.size()) + pages.size() + 1024);
  // A flipped byte inside a block is still caught by the hash.
  std::vector<std::uint8_t> bad = images[0];
  bad[bad.size() / 2] ^= 1;
  CHECK_ERROR(image::open_image(bad, rules()), Errc::sandbox_refused, "refused by the sandbox: heap image hash mismatch");
}

TEST_CASE("image scratch buffers are shared across threads, reused, and their list stays bounded") {
  const std::size_t before = image::Scratch::idle();
  const std::uint8_t* first = nullptr;
  {
    const image::Scratch s(3u << 20);
    REQUIRE(s.bytes().size() == (3u << 20));
    first = s.bytes().data();
    std::memset(s.bytes().data(), 0xab, s.bytes().size());  // every byte writable
  }
  CHECK(image::Scratch::idle() == std::min<std::size_t>(before + 1, 8));
  // Another thread (a sealing on another worker) gets the same buffer back, not a new one.
  const std::uint8_t* seen = nullptr;
  std::thread([&] {
    const image::Scratch s(3u << 20);  // larger than any the tests above sealed with
    seen = s.bytes().data();
  }).join();
  CHECK(seen == first);
  {
    // Two at once: the second is another buffer.
    const image::Scratch a(1u << 20);
    const image::Scratch b(1u << 20);
    CHECK(a.bytes().data() != b.bytes().data());
  }
  {
    // Many at once, given back together: the list keeps a bounded number.
    std::vector<std::unique_ptr<image::Scratch>> many;
    for (int i = 0; i < 20; ++i) many.push_back(std::make_unique<image::Scratch>(4096));
  }
  CHECK(image::Scratch::idle() <= 8);
  // The large buffer was kept over the small ones: a 3 MB request reuses it.
  const image::Scratch again(3u << 20);
  CHECK(again.bytes().data() == first);
}

namespace {

// The bytes of an lz4 image's frame blocks: (stored, compressed) payload bytes as the frame
// writes them (the frame follows the image's header; its own header is 15 bytes here: magic,
// flags, block size, content size, checksum).
std::size_t opener_kept_bytes(const std::vector<std::uint8_t>& sealed) {
  auto opener = image::ImageOpener::check(sealed, rules());
  return opener ? static_cast<std::size_t>(opener->kept_bytes()) : 0;
}

std::pair<std::size_t, std::size_t> lz4_block_bytes(const std::vector<std::uint8_t>& sealed) {
  std::size_t at = image::kHeaderBytes + 15;
  std::size_t stored = 0, packed = 0;
  while (at + 4 <= sealed.size()) {
    std::uint32_t word = 0;
    for (int i = 0; i < 4; ++i) word |= static_cast<std::uint32_t>(sealed[at + i]) << (8 * i);
    at += 4;
    if (word == 0) break;
    const std::size_t n = word & 0x7fffffffu;
    ((word & 0x80000000u) != 0 ? stored : packed) += n;
    at += n;
  }
  return {stored, packed};
}

}  // namespace

TEST_CASE("lz4 stores the parts it would barely shrink (random digits) and compresses the rest") {
  // 96 pages of random hex digits (what LZ4 shrinks by ~2% at ~2 ms per MB) between two
  // stretches of heap-like pages.
  std::vector<std::uint8_t> used = heap_like(400);
  std::mt19937 rng(3);
  const std::size_t digits_from = 150 * image::kPageBytes, digits_bytes = 96 * image::kPageBytes;
  for (std::size_t i = 0; i < digits_bytes; ++i) used[digits_from + i] = static_cast<std::uint8_t>("0123456789abcdef"[rng() & 15]);
  auto sealed = image::take_image(source_for(image::Codec::lz4), used);
  REQUIRE(sealed);
  auto opened = image::open_image(*sealed, rules());
  REQUIRE(opened);
  CHECK(opened->used == used);
  const auto [stored, packed] = lz4_block_bytes(*sealed);
  // The digits are stored, but for the 64 KB parts they share with heap-like pages.
  CHECK(stored >= digits_bytes - 2 * 64 * 1024);
  CHECK(stored <= digits_bytes + 2 * 64 * 1024);
  // The heap-like pages around them are compressed (LZ4 shrinks them by about a quarter).
  const std::size_t kept = opener_kept_bytes(*sealed);
  CHECK(packed < (kept - stored) * 7 / 8);
  // A span compressible throughout is compressed throughout.
  auto plain = image::take_image(source_for(image::Codec::lz4), heap_like(400));
  REQUIRE(plain);
  CHECK(lz4_block_bytes(*plain).first == 0);
  // The hash still covers every stored byte.
  std::vector<std::uint8_t> bad = *sealed;
  bad[image::kHeaderBytes + 15 + 4 + (bad.size() - image::kHeaderBytes) / 2] ^= 1;
  CHECK_ERROR(image::open_image(bad, rules()), Errc::sandbox_refused, "refused by the sandbox: heap image hash mismatch");
}
