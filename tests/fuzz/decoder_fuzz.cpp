// libFuzzer target over the frame and payload decoders. Build with clang:
//   cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 -DSOJOURN_FUZZ=ON
//   cmake --build build-fuzz --target decoder_fuzz && build-fuzz/tests/decoder_fuzz -max_total_time=60
#include "fuzz/decoder_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::uint8_t> bytes(data, size);
  sojourn::fuzz::decode_all(bytes);
  sojourn::fuzz::feed_frames(bytes);
  return 0;
}
