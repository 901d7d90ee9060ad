// libFuzzer target: the agent protocol's decoders (agents/agent_messages.cpp) over any bytes.
// Each refuses or accepts without crashing; what one accepts encodes to bytes that decode
// again and encode the same (the codec is its own fixed point after one round); the same for
// agent.transfer's two arguments, read as a Value.
#include <cstdint>
#include <span>

#include "agents/agent_messages.hpp"
#include "sojourn/core/messages.hpp"
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

// agent.transfer's two arguments {TRANSFER bytes, state} as a call carries them (a Value):
// what decode_transfer_call accepts gives the same arguments back, which it accepts again.
void transfer_call(std::span<const std::uint8_t> bytes) {
  auto args = decode_value(bytes);
  if (!args) return;
  auto m = decode_transfer_call(*args);
  if (!m) return;
  const std::vector<std::uint8_t> once = encode_value(transfer_call_args(*m));
  auto args_again = decode_value(once);
  fuzz::check(args_again.ok(), "accepted TRANSFER arguments encode to a value that decodes");
  auto again = decode_transfer_call(*args_again);
  fuzz::check(again.ok(), "accepted TRANSFER arguments decode again");
  fuzz::check(encode_value(transfer_call_args(*again)) == once, "TRANSFER arguments re-encode to the same bytes");
  fuzz::check(again->state_bytes == m->state_bytes, "the state's counted size survives the round trip");
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
  transfer_call(bytes);
  return 0;
}
