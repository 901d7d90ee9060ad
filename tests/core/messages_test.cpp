// Binary encoding of values and messages: round trips and hostile payloads.
#include <doctest/doctest.h>

#include <string>

#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;

namespace {
Value round_trip(const Value& v) {
  auto bytes = encode_value(v);
  auto back = decode_value(bytes);
  REQUIRE(back.ok());
  return *back;
}
}  // namespace

TEST_CASE("every kind of value survives an encode and decode") {
  for (const Value& v : {Value(), Value(true), Value(false), Value(-7), Value(1.5), Value("text"), Value(std::string(1, '\0'))}) {
    CHECK(deep_equal(round_trip(v), v));
  }
  Value t = Value::array({1, "two", 3.5, true});
  t.set("nested", Value::array({Value::array({1})}));
  CHECK(deep_equal(round_trip(t), t));
}

TEST_CASE("cycles and shared references survive an encode and decode") {
  Value root = Value::table();
  Value shared = root.new_table();
  shared.set("k", "v");
  root.set("a", shared);
  root.set("b", shared);
  root.set("me", root);
  Value back = round_trip(root);
  CHECK(deep_equal(back, root));
  CHECK(back.get("a").same_table(back.get("b")));
  CHECK(back.get("me").same_table(back));
}

TEST_CASE("a large string survives an encode and decode") {
  std::string big(5 << 20, 'x');
  big[12345] = 'y';
  Value back = round_trip(Value(big));
  CHECK(back.as_string() == big);
}

TEST_CASE("requests and replies round-trip with every field") {
  EvalRequest e{"return ...", "chunk", Value::array({1, 2}), Limits{1000, 2048, 30}, Isolation::process};
  auto d = decode_eval(encode(e));
  REQUIRE(d.ok());
  CHECK(d->source == e.source);
  CHECK(d->chunk_name == "chunk");
  CHECK(d->limits == e.limits);
  CHECK(d->isolation == Isolation::process);
  CHECK(deep_equal(d->args, e.args));

  Reply r = reply_error(make_error(Errc::cpu_limit, "CPU limit of 5 instructions exceeded"));
  auto dr = decode_reply(encode(r));
  REQUIRE(dr.ok());
  CHECK(dr->code == Errc::cpu_limit);
  CHECK(dr->message == "CPU limit of 5 instructions exceeded");
}

namespace {
std::string hex(const std::vector<std::uint8_t>& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::uint8_t b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}
}  // namespace

TEST_CASE("the wire layout stays what peers of this protocol version send: a byte-exact call, reply and error") {
  // Written by the Cereal portable-binary archives this codec replaced: a leading
  // endianness byte (1: little-endian), then little-endian fields, strings as u32 + bytes.
  CallRequest call;
  call.service = "kv.get";
  call.args = Value::array({Value("k")});
  CHECK(hex(encode(call)) == "01060000006b762e6765740100000000000000000000000000000006000000000100000005010000006b00000000");
  CHECK(hex(encode(reply_error(make_error(Errc::timeout, "late")))) ==
        "013e00040000006c617465000000000000000000000000000000000000");
  CHECK(hex(encode(ProtocolError{Errc::bad_kind, "no"})) == "010300020000006e6f");
  // A big-endian sender (first byte 0) is read too.
  auto pe = decode_protocol_error(std::vector<std::uint8_t>{0, 0x00, 0x03, 0, 0, 0, 1, 'a'});
  REQUIRE(pe.ok());
  CHECK(pe->code == Errc::bad_kind);
  CHECK(pe->message == "a");
  CHECK_ERROR(decode_reply(std::vector<std::uint8_t>{}), Errc::malformed_payload, "malformed payload: reply: truncated");
}

TEST_CASE("a table of scalars and a graph of tables keep their byte-exact layout") {
  // {x=1} is written without numbering a graph, {{1}} through the graph writer: both must
  // give the bytes peers of this protocol version send.
  Value x = Value::table();
  x.set("x", 1);
  CHECK(hex(encode(reply_ok(x))) ==
        "01000000000000"
        "01000000000000000000000000000000"
        "0600000000"
        "00000000"
        "01000000"
        "050100000078"
        "030100000000000000"
        "00");
  CHECK(hex(encode_value(Value::array({Value::array({1})}))) ==
        "01"
        "02000000000000000000000000000000"
        "0600000000"
        "01000000"
        "0601000000"
        "00000000"
        "01000000"
        "030100000000000000"
        "00000000");
  CHECK(hex(encode_value(Value("s"))) == "0100000000000000000000000000000000050100000073");
  // A table of scalars whose graph also holds a table it does not reference: only what is
  // reachable is sent.
  Value root = Value::table();
  Value unreferenced = root.new_table();
  unreferenced.set("y", 2);
  root.set("x", 1);
  CHECK(hex(encode_value(root)) == hex(encode_value(x)));
}

TEST_CASE("the decoder rejects truncated, oversized and inconsistent payloads") {
  auto bytes = encode(CallRequest{"kv.put", Value::array({"k", Value::array({1, 2, 3})})});
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    auto r = decode_call(std::span(bytes.data(), cut));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::malformed_payload);
  }
  auto trailing = bytes;
  trailing.push_back(0);
  CHECK_ERROR(decode_call(trailing), Errc::malformed_payload, "call request", "1 trailing bytes");

  // A string length far beyond the payload is refused before allocating it.
  std::vector<std::uint8_t> huge = {1, 0xff, 0xff, 0xff, 0x7f};
  auto r = decode_call(huge);
  REQUIRE_FALSE(r.ok());
  CHECK_ERROR(r, Errc::malformed_payload, "call request", "2147483647");

  // A table reference out of range.
  std::vector<std::uint8_t> bad_ref = {1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  auto rv = decode_value(bad_ref);
  REQUIRE_FALSE(rv.ok());
  CHECK_ERROR(rv, Errc::malformed_payload, "table reference 5", "1 tables");

  std::vector<std::uint8_t> bad_tag = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9};
  CHECK_ERROR(decode_value(bad_tag), Errc::malformed_payload, "value tag 9");
}

TEST_CASE("limits fill defaults and are clamped to the ceiling") {
  Limits l = effective_limits(Limits{0, 100, 0}, Limits{10, 20, 30}, Limits{5, 50, 0});
  CHECK(l == Limits{5, 50, 30});
  CHECK(parse_isolation("microvm").value() == Isolation::microvm);
  CHECK_ERROR(parse_isolation("vm"), Errc::invalid_argument, "'vm'", "trusted, process or microvm");
}

namespace {
// Two counters sharing one cell, a recursive function, and a table held by a cell.
Value closures() {
  Value state = Value::table();
  Value shared = state.new_table();
  shared.set("k", 1);
  state.set("shared", shared);
  Value inc = state.new_function("function() n = n + 1 return n end", "=agent", 3);
  inc.add_upvalue("n", 0);
  Value get = state.new_function("function() return n, t end", "=agent", 4);
  get.add_upvalue("n", Value());
  get.join_upvalue(0, inc, 0);
  get.add_upvalue("t", shared);
  Value fact = state.new_function("function(x) return x < 2 and 1 or x * fact(x - 1) end", "=agent", 5);
  fact.add_upvalue("fact", fact);
  state.set("inc", inc);
  state.set("get", get);
  state.set("fact", fact);
  state.set("insert", Value::library_function("table.insert"));
  state.set(fact, "keyed by a function");
  return state;
}
}  // namespace

TEST_CASE("closures of one function send their text once") {
  Value t = Value::table();
  const std::string text = "function() n = n + 1 return n end -- " + std::string(1000, 'x');
  for (int i = 0; i < 100; ++i) {
    Value f = t.new_function(text, "=agent", 2);
    f.add_upvalue("n", i);
    t.push(f);
  }
  auto bytes = encode_value(t);
  CHECK(bytes.size() < 1000 + 100 * 60);
  auto back = decode_value(bytes);
  REQUIRE(back.ok());
  CHECK(deep_equal(*back, t));
  CHECK(back->get(100).function_source() == text);
  CHECK(back->get(100).upvalue(0).as_integer() == 99);
}

TEST_CASE("functions keep their text, upvalue cells and sharing through an encode and decode") {
  Value state = closures();
  Value back = round_trip(state);
  CHECK(deep_equal(back, state));
  Value inc = back.get("inc"), get = back.get("get"), fact = back.get("fact");
  REQUIRE(inc.is_function());
  CHECK(inc.function_source() == "function() n = n + 1 return n end");
  CHECK(inc.function_chunk_name() == "=agent");
  CHECK(inc.function_line() == 3);
  CHECK(get.same_upvalue(0, inc, 0));
  CHECK_FALSE(get.same_upvalue(1, inc, 0));
  CHECK(get.upvalue(1).same_table(back.get("shared")));
  CHECK(fact.upvalue(0).same_function(fact));
  CHECK(back.get(fact).as_string() == "keyed by a function");
  CHECK(back.get("insert").library_name() == "table.insert");
  CHECK(round_trip(Value::function("function() end")).function_source() == "function() end");
}

TEST_CASE("the decoder checks function and cell references") {
  // One function whose source and chunk name are text 0 (""), line 1, no library name,
  // with one upvalue whose cell index 3 is out of range of the 1 cell sent.
  std::vector<std::uint8_t> bad_cell = {1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0,  // counts
                                        7, 0, 0, 0, 0,                                      // root
                                        0, 0, 0, 0,                                         // text 0
                                        0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,     // function
                                        1, 0, 0, 0, 1, 0, 0, 0, 'n', 3, 0, 0, 0,            // upvalue
                                        0};                                                 // cell: nil
  CHECK_ERROR(decode_value(bad_cell), Errc::malformed_payload, "cell reference 3", "1 cells");
  bad_cell[51] = 0;
  REQUIRE(decode_value(bad_cell).ok());
  CHECK(decode_value(bad_cell)->upvalue_name(0) == "n");
  bad_cell[26] = 1;  // source: text 1 of 1
  CHECK_ERROR(decode_value(bad_cell), Errc::malformed_payload, "text reference 1", "1 texts");
  std::vector<std::uint8_t> bad_fn = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0};
  CHECK_ERROR(decode_value(bad_fn), Errc::malformed_payload, "function reference 0", "0 functions");
  // A function count far beyond the payload is refused before allocating.
  std::vector<std::uint8_t> many = {1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0, 0};
  CHECK_ERROR(decode_value(many), Errc::malformed_payload, "function count 268435455");
}

TEST_CASE("a payload buffer given back is reused by the thread's next encode, and nothing of it shows") {
  Reply reply = reply_ok(Value::array({Value("a"), Value(2)}));
  const std::vector<std::uint8_t> fresh = encode(reply);
  while (take_small_buffer().capacity() != 0) {}  // this thread keeps none now

  // A buffer full of other bytes, given back: the next encode writes into it.
  std::vector<std::uint8_t> junk(300, 0xAB);
  const std::uint8_t* where = junk.data();
  give_small_buffer(junk);
  CHECK(junk.empty());
  std::vector<std::uint8_t> again = encode(reply);
  CHECK(again.data() == where);
  CHECK(again == fresh);
  auto back = decode_reply(again);
  REQUIRE(back.ok());
  CHECK(deep_equal(back->result, reply.result));

  // A large buffer is not kept (left with the caller), nor more than the most kept.
  std::vector<std::uint8_t> large(kSmallBufferBytes + 1);
  give_small_buffer(large);
  CHECK(large.size() == kSmallBufferBytes + 1);
  std::vector<std::uint8_t> none;
  give_small_buffer(none);  // nothing to keep
  CHECK(take_small_buffer().capacity() == 0);
  for (std::size_t i = 0; i < kKeptSmallBuffers + 3; ++i) {
    std::vector<std::uint8_t> small(16);
    give_small_buffer(small);
    CHECK(small.empty() == (i < kKeptSmallBuffers));
  }
  std::size_t kept = 0;
  while (true) {
    std::vector<std::uint8_t> b = take_small_buffer();
    if (b.capacity() == 0) break;
    CHECK(b.empty());
    ++kept;
  }
  CHECK(kept == kKeptSmallBuffers);
}

TEST_CASE("a call encoded into a buffer sized from a measure is byte for byte the plain encoding, whatever the measure") {
  // A TRANSFER's shape: a string argument and a state table with a 4 KB string and shared tables.
  Value state = Value::table();
  state.set("payload", std::string(4096, 'x'));
  Value stops = Value::array({"a", "b"});
  state.set("stops", stops);
  state.set("again", stops);
  CallRequest call{"agent.transfer", Value::array({std::string(300, 'r'), state})};
  const std::vector<std::uint8_t> plain = encode(call);
  const std::size_t measured = encode_value(call.args).size();
  for (std::size_t measure : {std::size_t{1}, std::size_t{63}, measured - 100, measured, measured + 1, 4 * measured}) {
    CAPTURE(measure);
    CHECK(encode(call, measure) == plain);
  }
  auto back = decode_call(encode(call, measured));
  REQUIRE(back.ok());
  CHECK(back->service == "agent.transfer");
  CHECK(back->args.get(2).get("payload").as_string().size() == 4096);
}

TEST_CASE("a call's reply decoded straight to its result agrees with decode_reply on every payload") {
  // An ok reply: the service's result, whatever the (ignored) message says.
  Reply ok = reply_ok(Value::table());
  ok.result.set("x", 1);
  ok.message = "ignored";
  ok.isolation = Isolation::process;
  bool malformed = true;
  auto r = decode_call_reply(encode(ok), malformed);
  CHECK_FALSE(malformed);
  REQUIRE(r.ok());
  CHECK(deep_equal(*r, ok.result));

  // A reply carrying an error: that error, not a malformed one.
  Reply failed = reply_error(make_error(Errc::cpu_limit, "CPU limit of 5 instructions exceeded"));
  r = decode_call_reply(encode(failed), malformed);
  CHECK_FALSE(malformed);
  CHECK_ERROR(r, Errc::cpu_limit, "CPU limit of 5 instructions exceeded");
  // A peer may answer with malformed_payload itself (our request was bad): not our decode's failure.
  r = decode_call_reply(encode(reply_error(make_error(Errc::malformed_payload, "bad args"))), malformed);
  CHECK_FALSE(malformed);
  CHECK_ERROR(r, Errc::malformed_payload, "bad args");

  // Every cut of a valid reply, and a byte too many, an unknown isolation level: malformed,
  // with decode_reply's own message.
  std::vector<std::uint8_t> bytes = encode(ok);
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    std::vector<std::uint8_t> part(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(cut));
    auto whole = decode_reply(part);
    REQUIRE_FALSE(whole.ok());
    r = decode_call_reply(part, malformed);
    CHECK(malformed);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::malformed_payload);
    CHECK(r.error().message == whole.error().message);
  }
  std::vector<std::uint8_t> longer = bytes;
  longer.push_back(0);
  r = decode_call_reply(longer, malformed);
  CHECK(malformed);
  CHECK(r.error().message == decode_reply(longer).error().message);
  std::vector<std::uint8_t> bad_level = bytes;
  bad_level.back() = 0x7f;  // the isolation byte is the reply's last
  r = decode_call_reply(bad_level, malformed);
  CHECK(malformed);
  CHECK(r.error().message == decode_reply(bad_level).error().message);
}
