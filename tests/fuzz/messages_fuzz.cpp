// libFuzzer target: the call, eval, reply and protocol-error decoders. Whatever one accepts
// encodes again and decodes to the same message.
#include <cstdint>
#include <span>

#include "sojourn/core/json.hpp"
#include "sojourn/core/messages.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::uint8_t> bytes(data, size);
  if (auto c = decode_call(bytes)) {
    auto again = decode_call(encode(*c));
    fuzz::check(again && again->service == c->service && deep_equal(again->args, c->args), "call round trip");
  }
  if (auto e = decode_eval(bytes)) {
    auto again = decode_eval(encode(*e));
    fuzz::check(again && again->source == e->source && again->chunk_name == e->chunk_name &&
                    again->limits == e->limits && again->isolation == e->isolation && again->signer == e->signer &&
                    again->signature == e->signature && again->nonce == e->nonce &&
                    again->expires_unix_ms == e->expires_unix_ms && deep_equal(again->args, e->args),
                "eval round trip");
  }
  if (auto r = decode_reply(bytes)) {
    auto again = decode_reply(encode(*r));
    fuzz::check(again && again->code == r->code && again->message == r->message && again->isolation == r->isolation &&
                    deep_equal(again->result, r->result),
                "reply round trip");
    (void)value_to_json(r->result);  // cycles, depth and odd keys must all be handled
    (void)to_debug_string(r->result);
  }
  if (auto p = decode_protocol_error(bytes)) {
    auto again = decode_protocol_error(encode(*p));
    fuzz::check(again && again->code == p->code && again->message == p->message, "protocol error round trip");
  }
  return 0;
}
