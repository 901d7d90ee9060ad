// libFuzzer target: JSON text to Value. What parses prints as JSON that parses again to an
// equal value (JSON input has no cycles or functions, so it always prints).
#include <cstdint>
#include <string_view>

#include "sojourn/core/json.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);  // SAFETY: bytes viewed as chars
  auto v = value_from_json(text);
  if (!v) return 0;
  auto printed = value_to_json(*v);
  fuzz::check(printed.ok(), "a value read from JSON prints as JSON");
  auto again = value_from_json(*printed);
  fuzz::check(again.ok(), "printed JSON parses");
  fuzz::check(deep_equal(*again, *v), "JSON round trip keeps the value");
  return 0;
}
