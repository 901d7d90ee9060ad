// libFuzzer target: the bundle decoder (it validates too). An accepted bundle has one
// canonical encoding: encoding it gives bytes that decode to the same bundle and hash.
#include <cstdint>
#include <span>

#include "sojourn/core/bundle.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto b = decode_bundle(std::span<const std::uint8_t>(data, size));
  if (!b) return 0;
  fuzz::check(validate_bundle(*b).ok(), "a decoded bundle is valid");
  const auto bytes = encode_bundle(*b);
  auto again = decode_bundle(bytes);
  fuzz::check(again.ok() && *again == *b, "bundle round trip");
  fuzz::check(bundle_hash(*again) == bundle_hash(*b), "same bundle, same hash");
  (void)encode_manifest(b->manifest);
  return 0;
}
