// Decoder entry points for the seeded robustness test (core_test); the libFuzzer targets
// in this folder check the same properties and more.
#pragma once

#include <cstdint>
#include <span>

#include "sojourn/core/frame.hpp"
#include "sojourn/core/json.hpp"
#include "sojourn/core/messages.hpp"

namespace sojourn::fuzz {

// Runs every payload decoder over `bytes`; true if any accepted them. Anything
// accepted is encoded again and must decode to an equal value.
inline bool decode_all(std::span<const std::uint8_t> bytes) {
  bool any = false;
  if (auto c = decode_call(bytes)) {
    any = true;
    auto again = decode_call(encode(*c));
    if (!again || !deep_equal(again->args, c->args)) __builtin_trap();
  }
  if (auto e = decode_eval(bytes)) any = true;
  if (auto r = decode_reply(bytes)) {
    any = true;
    (void)value_to_json(r->result);  // cycles, depth and odd keys must all be handled
    (void)to_debug_string(r->result);
  }
  if (auto p = decode_protocol_error(bytes)) any = true;
  if (auto v = decode_value(bytes)) any = true;
  return any;
}

inline void feed_frames(std::span<const std::uint8_t> bytes) {
  FrameDecoder d(1024);
  auto r = d.feed(bytes);
  for (const Frame& f : d.frames()) {
    if (f.payload.size() != f.header.length) __builtin_trap();
  }
  (void)r;
}

}  // namespace sojourn::fuzz
