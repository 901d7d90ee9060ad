// Frame header validation: each malformed kind is rejected before allocation.
#include <doctest/doctest.h>

#include "sojourn/core/frame.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;

namespace {
std::array<std::uint8_t, kFrameHeaderSize> header(FrameKind k, std::uint32_t len, std::uint64_t id = 9) {
  return encode_header(FrameHeader{k, 0, len, id});
}
}  // namespace

TEST_CASE("a well-formed header parses back to the same fields") {
  auto h = parse_header(header(FrameKind::eval, 1234, 0x1122334455667788ull), kDefaultMaxPayload);
  REQUIRE(h.ok());
  CHECK(h->kind == FrameKind::eval);
  CHECK(h->length == 1234);
  CHECK(h->request_id == 0x1122334455667788ull);
  auto b = header(FrameKind::call, 0);
  CHECK(b[0] == 'S');
  CHECK(b[3] == 'N');
}

TEST_CASE("each malformed header is rejected with its own message") {
  auto b = header(FrameKind::call, 10);
  b[0] = 'X';
  CHECK_ERROR(parse_header(b, kDefaultMaxPayload), Errc::bad_magic, "0x4E524A58");
  b = header(FrameKind::call, 10);
  b[4] = kProtocolVersion + 1;
  CHECK_ERROR(parse_header(b, kDefaultMaxPayload), Errc::bad_version, "version " + std::to_string(kProtocolVersion + 1),
              "speaks " + std::to_string(kProtocolVersion));
  b = header(FrameKind::call, 10);
  b[5] = 99;
  CHECK_ERROR(parse_header(b, kDefaultMaxPayload), Errc::bad_kind, "99");
  b = header(FrameKind::call, 10);
  b[6] = 1;
  CHECK_ERROR(parse_header(b, kDefaultMaxPayload), Errc::malformed_payload, "flags 0x0001");
  b = header(FrameKind::call, 0xFFFFFFFFu);
  auto big = parse_header(b, 1024);
  CHECK_ERROR(big, Errc::frame_too_large, "4294967295 bytes", "1024 bytes");
}

TEST_CASE("the stream decoder splits frames at any byte boundary") {
  std::vector<std::uint8_t> stream;
  for (std::uint64_t id = 1; id <= 3; ++id) {
    std::vector<std::uint8_t> payload(id * 7, static_cast<std::uint8_t>(id));
    auto f = encode_frame(FrameKind::call, id, payload);
    stream.insert(stream.end(), f.begin(), f.end());
  }
  FrameDecoder d;
  for (std::uint8_t byte : stream) REQUIRE(d.feed(std::span(&byte, 1)).ok());
  REQUIRE(d.frames().size() == 3);
  CHECK(d.frames()[2].header.request_id == 3);
  CHECK(d.frames()[2].payload.size() == 21);
  CHECK(d.pending_bytes() == 0);
  FrameDecoder partial;  // the first frame is 27 bytes
  REQUIRE(partial.feed(std::span(stream.data(), 30)).ok());
  CHECK(partial.frames().size() == 1);
  CHECK(partial.pending_bytes() == 3);
}
