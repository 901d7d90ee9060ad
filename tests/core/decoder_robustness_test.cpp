// Seeded mutation of valid payloads: every decoder must return a value or a clean
// error for any bytes, never crash, hang or allocate past the payload. The same
// entry points are libFuzzer targets (tests/fuzz/messages_fuzz.cpp, frame_fuzz.cpp) for longer runs.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "sojourn/core/messages.hpp"
#include "tests/fuzz/decoder_targets.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;

namespace {

std::vector<std::vector<std::uint8_t>> seeds() {
  Value cyclic = Value::table();
  Value child = cyclic.new_table();
  child.set("up", cyclic);
  cyclic.set("child", child);
  cyclic.set(1, 2.5);
  cyclic.set("s", std::string(300, 'x'));
  Value agent = Value::table();
  Value counter = agent.new_function("function() n = n + 1 return n, self end", "=agent", 2);
  counter.add_upvalue("n", 1);
  counter.add_upvalue("self", counter);
  Value reader = agent.new_function("function() return n end", "=agent", 3);
  reader.add_upvalue("n", Value());
  reader.join_upvalue(0, counter, 0);
  agent.set("inc", counter);
  agent.set("get", reader);
  agent.set("ins", Value::library_function("table.insert"));
  agent.set("data", cyclic);
  return {
      encode(CallRequest{"kv.put", Value::array({"k", cyclic})}),
      encode(reply_ok(Value::array({agent, counter}))),
      encode(EvalRequest{"return ...", "c", Value::array({1, true, "x"}), Limits{1, 2, 3}, Isolation::trusted}),
      encode(reply_ok(Value::array({cyclic, cyclic}))),
      encode(ProtocolError{Errc::bad_magic, "bad"}),
  };
}

}  // namespace

TEST_CASE("two hundred thousand mutated payloads never crash a decoder") {
  std::mt19937_64 rng(20261129);
  auto corpus = seeds();
  std::size_t accepted = 0, rejected = 0;
  for (int i = 0; i < 200'000; ++i) {
    std::vector<std::uint8_t> bytes = corpus[static_cast<std::size_t>(i) % corpus.size()];
    int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations; ++m) {
      std::size_t at = bytes.empty() ? 0 : rng() % bytes.size();
      switch (rng() % 5) {
        case 0: if (!bytes.empty()) bytes[at] = static_cast<std::uint8_t>(rng()); break;
        case 1: if (!bytes.empty()) bytes[at] ^= static_cast<std::uint8_t>(1u << (rng() % 8)); break;
        case 2: bytes.resize(at); break;
        case 3: bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(at), static_cast<std::uint8_t>(rng())); break;
        case 4: if (bytes.size() >= at + 4) { bytes[at] = 0xff; bytes[at + 1] = 0xff; bytes[at + 2] = 0xff; bytes[at + 3] = 0x7f; } break;
      }
    }
    (fuzz::decode_all(bytes) ? accepted : rejected)++;
  }
  // Both outcomes must occur, or the mutation is not exercising the decoders.
  CHECK(accepted > 1000);
  CHECK(rejected > 1000);
}

TEST_CASE("random byte streams through the frame decoder end in frames or one clean error") {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20'000; ++i) {
    std::vector<std::uint8_t> bytes(rng() % 200);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    if (i % 2 == 0 && bytes.size() >= 20) {  // half of them with a valid header prefix
      auto h = encode_header(FrameHeader{FrameKind::call, 0, static_cast<std::uint32_t>(rng() % 64), 1});
      std::copy(h.begin(), h.end(), bytes.begin());
    }
    fuzz::feed_frames(bytes);
  }
  CHECK(true);  // the property is "no crash, no sanitizer report"
}

namespace {

// The bytes of `v`, with the 8 bytes of `from` (as the encoder wrote them) replaced by `to`.
template <class T>
std::vector<std::uint8_t> patched(const Value& v, T from, T to) {
  auto bytes = encode_value(v);
  std::uint8_t a[sizeof(T)], b[sizeof(T)];
  std::memcpy(a, &from, sizeof a);
  std::memcpy(b, &to, sizeof b);
  auto at = std::search(bytes.begin(), bytes.end(), std::begin(a), std::end(a));
  REQUIRE(at != bytes.end());
  std::copy(std::begin(b), std::end(b), at);
  return bytes;
}

}  // namespace

// Found by value_fuzz: such tables decoded, then differed from themselves after a round trip.
TEST_CASE("a table key sent twice, in the array part's range, or as an integral float is refused") {
  Value t = Value::array({10});
  t.set(std::int64_t{0x0123456789abcdef}, "x");
  t.set(std::int64_t{0x0fedcba987654321}, "y");
  t.set(0.25, "z");
  REQUIRE(decode_value(encode_value(t)).ok());

  auto twice = decode_value(patched<std::int64_t>(t, 0x0fedcba987654321, 0x0123456789abcdef));
  REQUIRE_FALSE(twice.ok());
  CHECK_ERROR(twice, Errc::malformed_payload, "duplicate table key");
  auto in_array = decode_value(patched<std::int64_t>(t, 0x0123456789abcdef, 1));
  REQUIRE_FALSE(in_array.ok());
  CHECK_ERROR(in_array, Errc::malformed_payload, "table key 1", "array part");
  auto next = decode_value(patched<std::int64_t>(t, 0x0123456789abcdef, 2));
  REQUIRE_FALSE(next.ok());
  CHECK_ERROR(next, Errc::malformed_payload, "table key 2", "array part");
  auto integral = decode_value(patched<double>(t, 0.25, 7.0));
  REQUIRE_FALSE(integral.ok());
  CHECK_ERROR(integral, Errc::malformed_payload, "integral float table key");
  CHECK(decode_value(patched<std::int64_t>(t, 0x0123456789abcdef, 3)).ok());  // past the array's end: a map key
}

// Found by json_fuzz: a number past a double threw out of value_from_json.
TEST_CASE("a JSON number too large for a double is invalid JSON, not an exception") {
  auto v = value_from_json("[1, 1e309]");
  REQUIRE_FALSE(v.ok());
  CHECK_ERROR(v, Errc::invalid_json, "overflow", "'1e309'");
  CHECK(value_from_json("{\"a\": -1e400}").error().code == Errc::invalid_json);
  REQUIRE(value_from_json("[1e308]").ok());
}
