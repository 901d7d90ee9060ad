// The heap image's sealing and host-side checks (sandbox/image): what a restoring host refuses
// before any byte reaches a guest, and that what it accepts is the span that was taken.
#include "sandbox/image/heap_image.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "tests/support/error_checks.hpp"
#include "tests/support/temp_dir.hpp"

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
  SUBCASE("the agent handle in the header") { (*taken)[72] ^= 0x01; }
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
  // payload_bytes (offset 80) claims a gigabyte: refused from the header alone, even resealed.
  const std::uint64_t huge = 1ull << 30;
  std::memcpy(taken->data() + 80, &huge, 8);
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

TEST_CASE("the build id hashes every byte of the file, whatever its length against the read piece") {
  // Read in pieces of 64 KB: an empty file, a short one, an exact multiple and one with a
  // short last piece all hash to the SHA-256 of their whole bytes.
  sojourn::test::TempDir dir;
  const auto file_of = [&](const std::string& name, std::size_t n) {
    std::string bytes(n, '\0');
    for (std::size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>((i * 7) % 251);
    return dir.write(name, bytes);
  };
  const auto id_hex = [](const std::string& path) {
    auto id = image::build_id_of(path);
    REQUIRE(id);
    return image::hex(*id);
  };
  CHECK(id_hex(file_of("empty", 0)) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(id_hex(dir.write("abc", "abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(id_hex(file_of("two-pieces", 131072)) == "02170ec6855258d12448d7937b2faca08544235dba8416054daf149cc32b95c1");
  CHECK(id_hex(file_of("short-last", 150000)) == "7ae5150bf2db6df0ce31ec90f8ddb1d573655d01f2bf53990967a2123e9fdaa6");
}

namespace {

// The page map and kept pages of a span, as a guest hands them over.
struct Kept {
  std::vector<std::uint8_t> map;
  std::vector<std::uint8_t> pages;
};

Kept kept_of(const std::vector<std::uint8_t>& used) {
  Kept k;
  const std::size_t pages = used.size() / image::kPageBytes;
  k.map.assign(image::page_map_bytes(used.size()), 0);
  for (std::size_t p = 0; p < pages; ++p) {
    const std::uint8_t* page = used.data() + p * image::kPageBytes;
    bool zero = true;
    for (std::size_t i = 0; i < image::kPageBytes && zero; ++i) zero = page[i] == 0;
    if (zero) continue;
    k.map[p / 8] = static_cast<std::uint8_t>(k.map[p / 8] | (1u << (p % 8)));
    k.pages.insert(k.pages.end(), page, page + image::kPageBytes);
  }
  return k;
}

}  // namespace

TEST_CASE("kept pages read piece by piece seal an image that opens to the same span") {
  const std::vector<std::uint8_t> used = span_of(700);  // over two pieces of kReadPiece
  const Kept k = kept_of(used);
  std::size_t read = 0;
  int calls = 0;
  auto taken = image::take_image(source_with_build(1), used.size(), k.map, [&](std::span<std::uint8_t> into) {
    REQUIRE(read + into.size() <= k.pages.size());
    std::memcpy(into.data(), k.pages.data() + read, into.size());
    read += into.size();
    ++calls;
    return sojourn::Result<void>{};
  });
  REQUIRE(taken);
  CHECK(read == k.pages.size());
  CHECK(calls == 2);
  auto opened = image::open_image(*taken, rules_with_build(1));
  REQUIRE(opened);
  CHECK(opened->used == used);
}

TEST_CASE("a page reader's error stops the sealing and is returned as it is") {
  const std::vector<std::uint8_t> used = span_of(10);
  const Kept k = kept_of(used);
  auto taken = image::take_image(source_with_build(1), used.size(), k.map, [](std::span<std::uint8_t>) {
    return sojourn::Result<void>(sojourn::make_error(Errc::guest_crashed, "guest crashed: gone"));
  });
  CHECK_ERROR(taken, Errc::guest_crashed, "guest crashed: gone");
  std::vector<std::uint8_t> bad_map = k.map;
  bad_map.push_back(0);
  auto refused = image::take_image(source_with_build(1), used.size(), bad_map,
                                   [](std::span<std::uint8_t>) { return sojourn::Result<void>{}; });
  CHECK_ERROR(refused, Errc::invalid_argument, "a heap image's page map of 3 bytes keeps 7 of 10 pages");
}

TEST_CASE("an opener gives the map first, then the kept pages in pieces, and checks the end") {
  const std::vector<std::uint8_t> used = span_of(10);
  const Kept k = kept_of(used);
  auto taken = image::take_image(source_with_build(1), used);
  REQUIRE(taken);
  auto opener = image::ImageOpener::check(*taken, rules_with_build(1));
  REQUIRE(opener);
  CHECK(std::vector<std::uint8_t>(opener->page_map().begin(), opener->page_map().end()) == k.map);
  CHECK(opener->kept_bytes() == k.pages.size());
  std::vector<std::uint8_t> pages(k.pages.size());
  CHECK_ERROR(opener->finish(), Errc::sandbox_refused, "refused by the sandbox: heap image: no room for its 7 kept pages");
  REQUIRE(opener->next(std::span(pages).first(3 * image::kPageBytes)));
  REQUIRE(opener->next(std::span(pages).subspan(3 * image::kPageBytes)));
  CHECK(opener->finish());
  CHECK(pages == k.pages);
  std::vector<std::uint8_t> more(image::kPageBytes);
  CHECK_ERROR(opener->next(more), Errc::sandbox_refused, "refused by the sandbox: heap image: no room for its 7 kept pages");
  // The checks before the map are open_image's.
  (*taken)[image::kHeaderBytes + 5] ^= 1;
  CHECK_ERROR(image::ImageOpener::check(*taken, rules_with_build(1)), Errc::sandbox_refused,
              "refused by the sandbox: heap image hash mismatch");
}

TEST_CASE("an image's digest is read from its header and covers every byte of the image") {
  const std::vector<std::uint8_t> used = span_of(12);
  auto taken = image::take_image(source_with_build(1), used);
  REQUIRE(taken);
  const std::string digest = image::digest_hex(*taken);
  REQUIRE(digest.size() == 64);
  CHECK(image::has_digest(*taken, digest));
  CHECK(image::computed_digest_hex(*taken) == digest);
  // A byte changed in the payload, in a header field, or in the hash field itself: refused.
  for (std::size_t at : {taken->size() - 1, std::size_t{20}, image::kHeaderBytes - 1}) {
    std::vector<std::uint8_t> bad = *taken;
    bad[at] ^= 0x01;
    CHECK_FALSE(image::has_digest(bad, digest));
  }
  // Resealed after tampering (its own hash made whole again): not the image the name names.
  std::vector<std::uint8_t> resealed = *taken;
  resealed[image::kHeaderBytes + 5] ^= 0x40;
  image::reseal(resealed);
  CHECK_FALSE(image::has_digest(resealed, digest));
  CHECK(image::has_digest(resealed, image::digest_hex(resealed)));
  // (Named the older way, by the SHA-256 of all its bytes, it is still recognized:
  // strong_mobility_test's hooks name the images they change that way.)
  // Too short to hold a header: no digest, and nothing it could be named by matches.
  const std::vector<std::uint8_t> stub(10, 0);
  CHECK(image::digest_hex(stub).empty());
  CHECK_FALSE(image::has_digest(stub, digest));
}

TEST_CASE("only an image named by its own header hash counts as hashed in its sealed form") {
  const std::vector<std::uint8_t> used = span_of(12);
  auto taken = image::take_image(source_with_build(1), used);
  REQUIRE(taken);
  const std::string digest = image::digest_hex(*taken);
  CHECK(image::has_sealed_digest(*taken, digest));
  // A changed payload byte, header field or hash field: not hashed to the digest.
  for (std::size_t at : {taken->size() - 1, std::size_t{20}, image::kHeaderBytes - 1}) {
    std::vector<std::uint8_t> bad = *taken;
    bad[at] ^= 0x01;
    CHECK_FALSE(image::has_sealed_digest(bad, digest));
  }
  // A payload changed under a header hash left as it was, named by the SHA-256 of all its bytes
  // (how older nodes named images): has_digest knows it by that name, but its header's hash does
  // not match its bytes, so it does not count as hashed in its sealed form (an opener given no
  // hash refuses it).
  std::vector<std::uint8_t> lying = *taken;
  lying[image::kHeaderBytes + 5] ^= 0x40;
  std::array<std::uint8_t, 32> sum{};
  unsigned int n = 0;
  REQUIRE(EVP_Digest(lying.data(), lying.size(), sum.data(), &n, EVP_sha256(), nullptr) == 1);
  const std::string whole = image::hex(sum);
  CHECK(image::has_digest(lying, whole));
  CHECK_FALSE(image::has_sealed_digest(lying, whole));
  CHECK_FALSE(image::has_sealed_digest(lying, image::digest_hex(lying)));
}

TEST_CASE("a digest's bytes are read from lower-case hex only") {
  const std::vector<std::uint8_t> used = span_of(4);
  auto taken = image::take_image(source_with_build(1), used);
  REQUIRE(taken);
  const auto bytes = image::digest_bytes(image::digest_hex(*taken));
  REQUIRE(bytes);
  CHECK(image::hex(*bytes) == image::digest_hex(*taken));
  CHECK_FALSE(image::digest_bytes(""));
  CHECK_FALSE(image::digest_bytes(std::string(63, 'a')));
  CHECK_FALSE(image::digest_bytes(std::string(64, 'A')));
  CHECK_FALSE(image::digest_bytes(std::string(62, 'a') + "g0"));
}

TEST_CASE("an opener given the caller's hash skips its pass but still refuses an image that hash does not name") {
  const std::vector<std::uint8_t> used = span_of(10);
  const Kept k = kept_of(used);
  auto taken = image::take_image(source_with_build(1), used);
  REQUIRE(taken);
  const auto hashed = image::digest_bytes(image::digest_hex(*taken));
  REQUIRE(hashed);
  auto opener = image::ImageOpener::check(*taken, rules_with_build(1), &*hashed);
  REQUIRE(opener);
  std::vector<std::uint8_t> pages(opener->kept_bytes());
  REQUIRE(opener->next(pages));
  CHECK(opener->finish());
  CHECK(pages == k.pages);
  // A hash the header does not name: refused as a mismatch, naming both.
  std::array<std::uint8_t, 32> other = *hashed;
  other[0] ^= 1;
  CHECK_ERROR(image::ImageOpener::check(*taken, rules_with_build(1), &other), Errc::sandbox_refused,
              "refused by the sandbox: heap image hash mismatch: expected " + image::digest_hex(*taken) + ", got " +
                  image::hex(other));
  // Every other check stays: the build, the quota, the page map.
  CHECK_ERROR(image::ImageOpener::check(*taken, rules_with_build(2), &*hashed), Errc::sandbox_refused,
              "image from guest build");
  CHECK_ERROR(image::ImageOpener::check(*taken, rules_with_build(1, image::kPageBytes), &*hashed), Errc::sandbox_refused,
              "above the memory quota");
}

TEST_CASE("an image hashed as it arrives, in pieces of any size, is has_sealed_digest's answer") {
  auto sealed = image::take_image(source_with_build(3), span_of(64));
  REQUIRE(sealed.ok());
  const std::vector<std::uint8_t>& img = *sealed;
  const std::string digest = image::digest_hex(img);
  REQUIRE(image::has_sealed_digest(img, digest));
  // Cuts inside the header, on each side of its hash field and across it, then anywhere.
  for (std::size_t first : {std::size_t{1}, image::kHeaderBytes - 40, image::kHeaderBytes - 32, image::kHeaderBytes - 5,
                            image::kHeaderBytes, image::kHeaderBytes + 1, std::size_t{5000}}) {
    CAPTURE(first);
    image::DigestStream stream;
    std::mt19937 rng(static_cast<unsigned>(first));
    std::size_t at = 0;
    for (std::size_t n = first; at < img.size(); n = 1 + rng() % 9000) {
      n = std::min(n, img.size() - at);
      stream.update(std::span(img).subspan(at, n));
      at += n;
    }
    CHECK(stream.sealed_as(img, digest));
  }
  image::DigestStream whole;
  whole.update(img);
  CHECK_FALSE(whole.sealed_as(img, std::string(64, 'a')));  // another name
  image::DigestStream partial;
  partial.update(std::span(img).first(img.size() - 1));
  CHECK_FALSE(partial.sealed_as(img, digest));  // not every byte fed
  // A byte changed anywhere but the hash field: not the image the name says.
  for (std::size_t at : {std::size_t{20}, image::kHeaderBytes + 3, img.size() - 1}) {
    std::vector<std::uint8_t> bad = img;
    bad[at] ^= 0x40;
    image::DigestStream stream;
    stream.update(bad);
    CHECK_FALSE(stream.sealed_as(bad, digest));
  }
  // Finished once: a second answer is no.
  image::DigestStream once;
  once.update(img);
  CHECK(once.sealed_as(img, digest));
  CHECK_FALSE(once.sealed_as(img, digest));
}
