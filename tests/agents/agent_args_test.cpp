// How agent messages ride a service call's arguments without extra copies of a large state:
// transfer_args encodes the TRANSFER straight into the argument (the same bytes as encode),
// first_argument_bytes reads it where it lies, and the wire writer leaves room after a large
// field instead of doubling its buffer for the bytes that follow.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "agents/agent_messages.hpp"
#include "core/wire_io.hpp"

using namespace sojourn;

namespace {

AgentTransfer large_transfer(std::size_t state_bytes) {
  AgentTransfer t;
  t.record.id = std::string(32, 'a');
  t.record.home = "127.0.0.1:7400";
  t.record.owner = "alice";
  t.record.bundle_hash = std::string(64, 'b');
  t.record.entry = "hop";
  t.record.state = Value::table();
  std::string blob(state_bytes, '\0');
  for (std::size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>('a' + (i * 7) % 26);
  t.record.state.set("blob", blob);
  t.record.state.set("n", 7);
  t.record.epoch = 3;
  t.record.max_hops = 8;
  t.record.hops.push_back(AgentHop{"127.0.0.1:7400", 0, 1700000000000, 3, 12, "trusted"});
  t.record.report_token = std::string(32, 'c');
  t.to = "node-0123456789abcdef0123456789abcdef";
  t.nonce = std::string(32, 'd');
  t.expires_unix_ms = 1700000030000;
  return t;
}

}  // namespace

TEST_CASE("transfer_args carries the bytes encode writes, read back in place") {
  for (std::size_t size : {std::size_t{0}, std::size_t{4096}, std::size_t{1} << 20}) {
    CAPTURE(size);
    const AgentTransfer transfer = large_transfer(size);
    const AgentMessageBytes encoded = encode(transfer);
    std::size_t bytes = 0;
    const Value args = transfer_args(transfer, bytes);
    CHECK(bytes == encoded.size());
    REQUIRE(args.is_table());
    CHECK(args.length() == 1);
    auto view = first_argument_bytes(args, "the argument");
    REQUIRE(view.ok());
    CHECK(std::vector<std::uint8_t>(view->begin(), view->end()) == encoded);
    // A view of the argument's own string, not a copy of it.
    const detail::Slot& first = args.graph()->tables[std::get<detail::TableRef>(args.slot()).index].array.front();
    CHECK(static_cast<const void*>(view->data()) == static_cast<const void*>(std::get<std::string>(first).data()));
    auto decoded = decode_transfer(*view);
    REQUIRE(decoded.ok());
    CHECK(deep_equal(decoded->record.state, transfer.record.state));
    CHECK(decoded->nonce == transfer.nonce);
    // The same as the message_args of the encoded bytes, read the old way.
    const Value old_args = message_args(encoded);
    CHECK(deep_equal(old_args, args));
    const Value old_first = old_args.get(1);
    auto old_view = as_message_bytes(old_first, "the argument");
    REQUIRE(old_view.ok());
    CHECK(std::vector<std::uint8_t>(old_view->begin(), old_view->end()) == encoded);
  }
}

TEST_CASE("first_argument_bytes refuses what is not a string argument") {
  const std::string refusal = "invalid argument: bad agent message: the argument is not a binary string";
  for (const Value& args : {Value{}, Value("text"), Value::table(), Value::array({Value(1)}), Value::array({Value::table()})}) {
    auto view = first_argument_bytes(args, "the argument");
    REQUIRE_FALSE(view.ok());
    CHECK(view.error().message == refusal);
  }
  Value keyed = Value::table();
  keyed.set("x", "bytes");
  CHECK_FALSE(first_argument_bytes(keyed, "the argument").ok());
  // An empty string is still a string argument (the decoder then refuses it).
  auto empty = first_argument_bytes(Value::array({Value("")}), "the argument");
  REQUIRE(empty.ok());
  CHECK(empty->empty());
  CHECK_FALSE(decode_transfer(*empty).ok());
}

TEST_CASE("the wire writer leaves room after a large field") {
  const std::string large(1 << 20, 'x');
  wire::Writer w;
  w.string("head");
  w.string(large);
  for (int i = 0; i < 100; ++i) w.u64(static_cast<std::uint64_t>(i));  // what follows the state
  const std::vector<std::uint8_t> bytes = w.take();
  CHECK(bytes.size() == 1 + 4 + 4 + 4 + large.size() + 800);
  // Doubling after the large field would have left a buffer of twice its size.
  CHECK(bytes.capacity() < bytes.size() + bytes.size() / 8);
  // Many large fields after one another: every byte lands where it belongs.
  wire::StringWriter sw;
  std::string piece(64 * 1024, 'y');
  for (int i = 0; i < 40; ++i) {
    piece[0] = static_cast<char>('A' + i);
    sw.string(piece);
    sw.u8(static_cast<std::uint8_t>(i));
  }
  const std::string out = sw.take();
  REQUIRE(out.size() == 1 + 40 * (4 + piece.size() + 1));
  for (std::size_t i = 0; i < 40; ++i) {
    const std::size_t at = 1 + i * (4 + piece.size() + 1);
    CHECK(out[at + 4] == static_cast<char>('A' + i));
    CHECK(out[at + 4 + piece.size()] == static_cast<char>(i));
  }
}
