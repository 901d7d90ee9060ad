// How agent messages ride a service call's arguments without extra copies of a large state:
// transfer_args encodes the TRANSFER straight into the first argument (the same bytes as
// encode) and references the state as the second, first_argument_bytes and
// decode_transfer_call read them where they lie, and the wire writer leaves room after a large
// field instead of doubling its buffer for the bytes that follow.
#include <doctest/doctest.h>

#include <mutex>
#include <string>
#include <vector>

#include "agents/agent_messages.hpp"
#include "core/wire_io.hpp"
#include "sojourn/core/messages.hpp"

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

TEST_CASE("transfer_args carries the TRANSFER's bytes and the state, referenced, read back in place") {
  for (std::size_t size : {std::size_t{0}, std::size_t{4096}, std::size_t{1} << 20}) {
    CAPTURE(size);
    const AgentTransfer transfer = large_transfer(size);
    const std::size_t graph_tables = transfer.record.state.graph()->tables.size();
    const AgentMessageBytes encoded = encode(transfer);
    std::mutex lock;
    std::size_t bytes = 0;
    Value args = transfer_args(transfer, bytes, lock);
    REQUIRE(args.is_table());
    CHECK(args.length() == 2);
    // The arguments as the call's frame carries them: their size is what transfer_args said.
    const std::vector<std::uint8_t> wire = encode_value(args);
    CHECK(bytes == wire.size());
    // The TRANSFER's bytes are encode's, and they carry no state (it is the second argument).
    auto view = first_argument_bytes(args, "the argument");
    REQUIRE(view.ok());
    CHECK(std::vector<std::uint8_t>(view->begin(), view->end()) == encoded);
    CHECK(encoded.size() < 1024);
    // The state is the record's own table, in its own graph: referenced, not copied.
    const Value state = args.get(2);
    CHECK(state.same_table(transfer.record.state));
    const Value blob = transfer.record.state.get("blob");
    CHECK(args.graph() == transfer.record.state.graph());
    CHECK(transfer.record.state.graph()->tables.size() == graph_tables + 1);
    // What the destination reads: the decoded arguments, the state referenced where it lies.
    auto decoded_args = decode_value(wire);
    REQUIRE(decoded_args.ok());
    auto decoded = decode_transfer_call(*decoded_args);
    REQUIRE(decoded.ok());
    CHECK(deep_equal(decoded->record.state, transfer.record.state));
    CHECK(decoded->record.state.graph() == decoded_args->graph());
    CHECK(decoded->state_bytes == encode_value(transfer.record.state).size());
    CHECK(decoded->nonce == transfer.nonce);
    // ... and once decoded, the TRANSFER's bytes are dropped from the arguments.
    CHECK(decoded_args->get(1).as_string().empty());
    // Released: the table stays in the state's graph, empty; the state is unchanged.
    release_transfer_args(args, lock);
    CHECK(args.is_nil());
    CHECK(transfer.record.state.graph()->tables[graph_tables].array.empty());
    CHECK(deep_equal(transfer.record.state.get("blob"), blob));
    CHECK(encode_value(transfer.record.state).size() == decoded->state_bytes);
  }
}

TEST_CASE("agent.transfer's arguments are exactly the TRANSFER and a state table") {
  const AgentTransfer transfer = large_transfer(16);
  const std::string bytes = [&] {
    const AgentMessageBytes b = encode(transfer);
    return std::string(b.begin(), b.end());
  }();
  const std::string two = "invalid argument: bad agent message: transfer: agent.transfer takes two arguments, the TRANSFER and the agent's state";
  for (const Value& args : {Value::array({Value(bytes)}), Value::array({Value(bytes), Value::table(), Value::table()})}) {
    auto m = decode_transfer_call(args);
    REQUIRE_FALSE(m.ok());
    CHECK(m.error().message == two);
  }
  Value keyed = Value::array({Value(bytes), Value::table()});
  keyed.set("x", 1);
  auto k = decode_transfer_call(keyed);
  REQUIRE_FALSE(k.ok());
  CHECK(k.error().message == two);
  for (const Value& state : {Value(), Value(7), Value("state")}) {
    Value args = Value::array({Value(bytes)});
    args.set(2, state);
    auto m = decode_transfer_call(args);
    REQUIRE_FALSE(m.ok());
    CHECK(m.error().code == Errc::invalid_argument);
  }
  auto s = decode_transfer_call(Value::array({Value(bytes), Value("state")}));
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message == "invalid argument: bad agent message: transfer: the agent's state (the second argument) is not a table");
  // An older node's TRANSFER (one argument, its own version) hears about the version first.
  std::string older = bytes;
  older[2] = static_cast<char>(kAgentProtocolVersion - 1);
  auto v = decode_transfer_call(Value::array({Value(older)}));
  REQUIRE_FALSE(v.ok());
  CHECK(v.error().message.find("agent protocol version " + std::to_string(kAgentProtocolVersion - 1)) != std::string::npos);
  // A damaged TRANSFER beside a good state is the TRANSFER's error.
  auto cut = decode_transfer_call(Value::array({Value(bytes.substr(0, bytes.size() - 1)), Value::table()}));
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.error().message.rfind("invalid argument: bad agent message: transfer: ", 0) == 0);
  auto good = decode_transfer_call(transfer_call_args(transfer));
  REQUIRE(good.ok());
  CHECK(deep_equal(good->record.state, transfer.record.state));
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
