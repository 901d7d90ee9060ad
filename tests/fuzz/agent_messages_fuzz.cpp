// libFuzzer target: the agent protocol's decoders (agents/agent_messages.cpp) over any bytes.
// Each refuses or accepts without crashing; what one accepts encodes to bytes that decode
// again and encode the same (the codec is its own fixed point after one round).
#include <cstdint>
#include <span>

#include "agents/agent_messages.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;

namespace {

template <class T>
void round_trip(std::span<const std::uint8_t> bytes, Result<T> (*decode)(std::span<const std::uint8_t>)) {
  auto m = decode(bytes);
  if (!m) return;
  const auto once = encode(*m);
  auto again = decode(once);
  fuzz::check(again.ok(), "an accepted agent message encodes to bytes that decode");
  fuzz::check(encode(*again) == once, "an agent message re-encodes to the same bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  round_trip(bytes, decode_launch);
  round_trip(bytes, decode_launch_answer);
  round_trip(bytes, decode_transfer);
  round_trip(bytes, decode_commit);
  round_trip(bytes, decode_bundle_wanted);
  round_trip(bytes, decode_transfer_reply);
  round_trip(bytes, decode_arrival);
  round_trip(bytes, decode_arrival_answer);
  round_trip(bytes, decode_end);
  round_trip(bytes, decode_send);
  round_trip(bytes, decode_send_answer);
  round_trip(bytes, decode_deliver);
  round_trip(bytes, decode_status);
  round_trip(bytes, decode_list);
  round_trip(bytes, decode_wait_query);
  round_trip(bytes, decode_fetch_query);
  round_trip(bytes, decode_fetch_answer);
  round_trip(bytes, decode_image_part);
  return 0;
}
