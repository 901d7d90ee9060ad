// Heap images arriving in pieces (agents/image_staging.hpp): assembled in any order and hashed as
// they land, a piece with no first piece keeps nothing, a cut stream is never handed out and
// leaves nothing behind, a large buffer let go is the next image's.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "agents/image_staging.hpp"
#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/image/scratch.hpp"
#include "sojourn/core/bundle.hpp"
#include "tests/support/error_checks.hpp"

namespace sojourn {
namespace {

namespace image = sandbox::image;

constexpr std::uint64_t kQuota = 16u << 20;

// A sealed image of `pages` pages of pseudo-random bytes (which no codec can shrink much).
std::vector<std::uint8_t> sealed_image(std::size_t pages, image::Codec codec = image::Codec::zstd) {
  std::vector<std::uint8_t> span(pages * image::kPageBytes);
  std::uint32_t x = 2463534242u;
  for (auto& b : span) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = static_cast<std::uint8_t>(x);
  }
  auto sealed =
      image::take_image({{}, sandbox::guest::kArenaBase, sandbox::guest::arena_bytes_for_quota(kQuota), 0, codec}, span);
  REQUIRE(sealed.ok());
  return *sealed;
}

ImagePart piece_of(const std::vector<std::uint8_t>& img, std::size_t at, std::size_t n) {
  ImagePart part;
  part.id = std::string(32, 'a');
  part.epoch = 2;
  part.image_sha256 = sha256_hex(img);
  part.total_bytes = img.size();
  part.offset = at;
  n = std::min(n, img.size() - at);
  part.bytes = std::span(img).subspan(at, n);  // a view: `img` outlives the part
  return part;
}

ImageStaging::Bounds bounds(std::chrono::milliseconds lifetime = std::chrono::milliseconds(60'000)) {
  return {kQuota, kQuota, lifetime};
}

constexpr std::size_t kPiece = 16u << 10;

}  // namespace

TEST_CASE("pieces in order assemble to the image, handed out once") {
  const auto img = sealed_image(24);
  REQUIRE(img.size() > 4 * kPiece);
  ImageStaging staging(bounds());
  for (std::size_t at = 0; at < img.size(); at += kPiece) {
    CHECK(!staging.take(std::string(32, 'a'), 2, sha256_hex(img)).has_value());  // not whole yet
    REQUIRE(staging.add(piece_of(img, at, kPiece)).ok());
  }
  auto taken = staging.take(std::string(32, 'a'), 2, sha256_hex(img));
  REQUIRE(taken.has_value());
  CHECK(*taken == img);
  CHECK(staging.staged_bytes() == 0);
  CHECK(!staging.take(std::string(32, 'a'), 2, sha256_hex(img)).has_value());
}

TEST_CASE("a piece with no first piece, or of another image, is refused and keeps nothing") {
  const auto img = sealed_image(8);
  ImageStaging staging(bounds());
  CHECK_ERROR(staging.add(piece_of(img, kPiece, kPiece)), Errc::invalid_argument,
              "image part at offset 16384 of agent " + std::string(32, 'a') + " follows no piece before it");
  CHECK(staging.staged_bytes() == 0);
  REQUIRE(staging.add(piece_of(img, 0, kPiece)).ok());
  ImagePart other = piece_of(img, kPiece, kPiece);
  other.image_sha256 = std::string(64, 'e');
  CHECK_ERROR(staging.add(other), Errc::invalid_argument, "follows no piece before it");
  CHECK(staging.staged_bytes() == img.size());  // the image begun is still whole so far
}

TEST_CASE("a stream cut in the middle is never handed to a TRANSFER and leaves nothing behind") {
  const auto img = sealed_image(16);
  ImageStaging staging(bounds(std::chrono::milliseconds(20)));
  REQUIRE(staging.add(piece_of(img, 0, kPiece)).ok());
  REQUIRE(staging.add(piece_of(img, kPiece, kPiece)).ok());
  CHECK(!staging.take(std::string(32, 'a'), 2, sha256_hex(img)).has_value());
  CHECK(staging.staged_bytes() == img.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  // Past its lifetime it is dropped (at the next piece): the rest of the stream finds nothing.
  CHECK_ERROR(staging.add(piece_of(img, 2 * kPiece, kPiece)), Errc::invalid_argument, "follows no piece before it");
  CHECK(staging.staged_bytes() == 0);
}

TEST_CASE("an incompressible image of every codec is staged; a first piece naming an unknown codec is refused") {
  for (image::Codec codec : {image::Codec::stored, image::Codec::zstd, image::Codec::lz4}) {
    CAPTURE(image::codec_name(codec));
    ImageStaging staging(bounds());
    const std::vector<std::uint8_t> img = sealed_image(40, codec);
    for (std::size_t at = 0; at < img.size(); at += kPiece) REQUIRE(staging.add(piece_of(img, at, kPiece)));
    auto taken = staging.take(std::string(32, 'a'), 2, sha256_hex(img));
    REQUIRE(taken.has_value());
    CHECK(*taken == img);
  }
  ImageStaging staging(bounds());
  std::vector<std::uint8_t> img = sealed_image(4, image::Codec::lz4);
  img[12] = 9;  // the header's codec field
  const auto refused = staging.add(piece_of(img, 0, kPiece));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message == "refused by the sandbox: heap image: codec 9 is not one this node reads (stored, zstd, lz4)");
  CHECK(staging.staged_bytes() == 0);
}

TEST_CASE("a large image in 1 MB pieces is assembled; restarted or dropped midway, nothing is left") {
  const auto img = sealed_image(2560, image::Codec::stored);
  REQUIRE(img.size() > (10u << 20));
  constexpr std::size_t kLarge = 1u << 20;
  const std::string id(32, 'a');
  ImageStaging staging(bounds());
  // Begun, then begun again (a retried hand-over): the first buffer goes.
  for (std::size_t at = 0; at < 3 * kLarge; at += kLarge) REQUIRE(staging.add(piece_of(img, at, kLarge)).ok());
  for (std::size_t at = 0; at < img.size(); at += kLarge) REQUIRE(staging.add(piece_of(img, at, kLarge)).ok());
  auto taken = staging.take(id, 2, sha256_hex(img));
  REQUIRE(taken.has_value());
  CHECK(*taken == img);
  CHECK(staging.staged_bytes() == 0);
  // Dropped past its lifetime in the middle of its pieces.
  ImageStaging brief(bounds(std::chrono::milliseconds(20)));
  REQUIRE(brief.add(piece_of(img, 0, kLarge)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  CHECK_ERROR(brief.add(piece_of(img, kLarge, kLarge)), Errc::invalid_argument, "follows no piece before it");
  CHECK(brief.staged_bytes() == 0);
}


TEST_CASE("pieces out of order land in their place and assemble; the image is hashed as it lands") {
  const auto img = sealed_image(40, image::Codec::stored);
  const std::string id(32, 'a');
  const std::string digest = image::digest_hex(img);
  const std::size_t count = (img.size() + kPiece - 1) / kPiece;
  REQUIRE(count >= 8);
  auto part = [&](std::size_t i) {
    ImagePart p = piece_of(img, i * kPiece, kPiece);
    p.image_sha256 = digest;
    return p;
  };
  ImageStaging staging(bounds());
  REQUIRE(staging.add(part(0)).ok());
  // Three in flight, each window served backwards: every piece but the first of a window waits.
  for (std::size_t base = 1; base < count; base += 3) {
    for (std::size_t i = std::min(count, base + 3); i-- > base;) {
      CHECK(!staging.take(id, 2, digest).has_value());
      REQUIRE(staging.add(part(i)).ok());
    }
  }
  REQUIRE(staging.add(part(2)).ok());  // a late copy of a piece kept: the first stands
  bool checked = false;
  auto taken = staging.take(id, 2, digest, &checked);
  REQUIRE(taken.has_value());
  CHECK(*taken == img);
  CHECK(checked);
  CHECK(image::has_sealed_digest(*taken, digest));
  CHECK(staging.staged_bytes() == 0);
}

TEST_CASE("an out-of-order piece that is not one of the image's pieces, or too far ahead, is refused") {
  const auto img = sealed_image(40, image::Codec::stored);
  const std::string digest = image::digest_hex(img);
  auto part = [&](std::size_t at, std::size_t n) {
    ImagePart p = piece_of(img, at, n);
    p.image_sha256 = digest;
    return p;
  };
  ImageStaging staging(bounds());
  REQUIRE(staging.add(part(0, kPiece)).ok());
  CHECK_ERROR(staging.add(part(kPiece + 4096, kPiece)), Errc::invalid_argument, "is not one of its image's pieces");
  CHECK_ERROR(staging.add(part(2 * kPiece, kPiece / 2)), Errc::invalid_argument, "is not one of its image's pieces");
  CHECK_ERROR(staging.add(part(2 * kPiece, kPiece + 4096)), Errc::invalid_argument, "is not one of its image's pieces");
  for (std::size_t i = 2; i < 2 + ImageStaging::kPiecesAhead; ++i) REQUIRE(staging.add(part(i * kPiece, kPiece)).ok());
  CHECK_ERROR(staging.add(part((2 + ImageStaging::kPiecesAhead) * kPiece, kPiece)), Errc::invalid_argument,
              "is too far ahead of the pieces received");
  CHECK(staging.staged_bytes() == img.size());
  // The missing piece fills the gap: everything held aside follows, the rest in order.
  for (std::size_t at = kPiece; at < img.size(); at += kPiece) REQUIRE(staging.add(part(at, kPiece)).ok());
  bool checked = false;
  auto taken = staging.take(std::string(32, 'a'), 2, digest, &checked);
  REQUIRE(taken.has_value());
  CHECK(*taken == img);
  CHECK(checked);
}

TEST_CASE("a staged image whose bytes do not hash to its name is handed out unchecked, never as checked") {
  const auto img = sealed_image(24, image::Codec::stored);
  const std::string digest = image::digest_hex(img);
  std::vector<std::uint8_t> bad = img;
  bad[bad.size() - 100] ^= 1;  // in the payload, after the header: the sealed hash differs
  ImageStaging staging(bounds());
  for (std::size_t at = 0; at < bad.size(); at += kPiece) {
    ImagePart p = piece_of(bad, at, kPiece);
    p.image_sha256 = digest;
    REQUIRE(staging.add(p).ok());
  }
  bool checked = true;
  auto taken = staging.take(std::string(32, 'a'), 2, digest, &checked);
  REQUIRE(taken.has_value());
  CHECK_FALSE(checked);
  CHECK_FALSE(image::has_sealed_digest(*taken, digest));  // what the TRANSFER's own pass then refuses
  // Named by the SHA-256 of all its bytes (older nodes): not the sealed form, never said checked.
  for (std::size_t at = 0; at < img.size(); at += kPiece) REQUIRE(staging.add(piece_of(img, at, kPiece)).ok());
  taken = staging.take(std::string(32, 'a'), 2, sha256_hex(img), &checked);
  REQUIRE(taken.has_value());
  CHECK(*taken == img);
  CHECK_FALSE(checked);
}

TEST_CASE("a large image's buffer, let go, is the next one's; its old bytes are never handed out") {
  const auto first = sealed_image(2560, image::Codec::stored);
  auto second = sealed_image(1500, image::Codec::stored);  // smaller: the kept buffer holds it
  second.back() ^= 1;
  image::reseal(second);
  REQUIRE(first.size() > second.size() + (1u << 20));
  REQUIRE(second.size() > image::kImageBufferMin);
  constexpr std::size_t kLarge = 1u << 20;
  const std::string id(32, 'a');
  auto stage = [&](ImageStaging& staging, const std::vector<std::uint8_t>& img, std::size_t pieces_then_stop) {
    std::size_t sent = 0;
    for (std::size_t at = 0; at < img.size() && sent < pieces_then_stop; at += kLarge, ++sent) {
      ImagePart p = piece_of(img, at, kLarge);
      p.image_sha256 = image::digest_hex(img);
      REQUIRE(staging.add(p).ok());
    }
  };
  ImageStaging staging(bounds());
  stage(staging, first, SIZE_MAX);
  bool checked = false;
  auto taken = staging.take(id, 2, image::digest_hex(first), &checked);
  REQUIRE(taken.has_value());
  CHECK(checked);
  const std::uint8_t* buffer = taken->data();
  auto shared = image::shared_image(std::move(*taken));
  CHECK(*shared == first);
  shared.reset();  // the agent left: its buffer is kept
  CHECK(image::kept_image_buffer() >= first.size());
  // The next image staged takes it; until every piece has landed nothing is handed out.
  stage(staging, second, 1);
  CHECK(image::kept_image_buffer() == 0);
  CHECK(!staging.take(id, 2, image::digest_hex(second)).has_value());
  stage(staging, second, SIZE_MAX);
  taken = staging.take(id, 2, image::digest_hex(second), &checked);
  REQUIRE(taken.has_value());
  CHECK(checked);
  CHECK(taken->data() == buffer);
  CHECK(*taken == second);
  // A small image never takes it, and a small buffer is not kept.
  image::give_image_buffer(std::move(*taken));
  CHECK(image::take_image_buffer(image::kImageBufferMin - 1).capacity() == 0);
  image::give_image_buffer(std::vector<std::uint8_t>(1024));
  CHECK(image::kept_image_buffer() >= second.size());
  // The node's sweep frees it only once it has waited kImageBufferIdleMs: not yet.
  image::drop_idle_image_buffer();
  CHECK(image::kept_image_buffer() >= second.size());
}

}  // namespace sojourn
