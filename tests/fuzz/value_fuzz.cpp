// libFuzzer target: the Value codec (shared references, cycles, functions and their
// upvalues). An accepted value encodes again to a value deep-equal to it, and prints.
#include <cstdint>
#include <cstdio>
#include <span>

#include "sojourn/core/json.hpp"
#include "sojourn/core/messages.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto v = decode_value(std::span<const std::uint8_t>(data, size));
  if (!v) return 0;
  const auto bytes = encode_value(*v);
  auto again = decode_value(bytes);
  fuzz::check(again.ok(), "an encoded value decodes");
  if (!deep_equal(*again, *v)) {
    std::fprintf(stderr, "decoded:  %s\nagain:    %s\n", to_debug_string(*v, 2000).c_str(), to_debug_string(*again, 2000).c_str());
    fuzz::check(false, "a value survives a round trip");
  }
  fuzz::check(encode_value(*again) == bytes, "encoding is canonical");
  (void)value_to_json(*v, true);
  (void)to_debug_string(*v);
  return 0;
}
