// libFuzzer target: the frame decoder over a hostile byte stream, fed whole and in pieces.
// Frames must come out with their declared length and the same frames whatever the split.
#include <cstdint>
#include <span>

#include "sojourn/core/frame.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  // The first byte picks where the stream is cut; the rest is the stream.
  const std::size_t cut = size > 1 ? data[0] % size : 0;
  std::span<const std::uint8_t> stream(data + 1, size - 1);

  FrameDecoder whole(4096);
  const bool whole_ok = whole.feed(stream).ok();
  for (const Frame& f : whole.frames()) fuzz::check(f.payload.size() == f.header.length, "frame length");

  FrameDecoder split(4096);
  bool split_ok = split.feed(stream.first(std::min(cut, stream.size()))).ok();
  if (split_ok) split_ok = split.feed(stream.subspan(std::min(cut, stream.size()))).ok();
  fuzz::check(whole_ok == split_ok, "a split stream decodes like the whole stream");
  if (whole_ok) {
    fuzz::check(whole.frames().size() == split.frames().size(), "same frame count whatever the split");
    fuzz::check(whole.pending_bytes() == split.pending_bytes(), "same pending bytes whatever the split");
    for (std::size_t i = 0; i < whole.frames().size(); ++i) {
      fuzz::check(whole.frames()[i].payload == split.frames()[i].payload, "same payloads whatever the split");
    }
  }

  if (stream.size() >= kFrameHeaderSize) {
    auto header = parse_header(stream.first<kFrameHeaderSize>(), 4096);
    if (header) {
      auto again = encode_header(*header);
      fuzz::check(std::equal(again.begin(), again.end(), stream.begin()), "an accepted header encodes to its bytes");
    }
  }
  return 0;
}
