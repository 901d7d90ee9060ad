// Tests of the channel protocol's codec between host and guest: frames round-trip, a truncated
// or padded payload is refused by name, and the SIGSYS handler's frame decodes.
#include <doctest/doctest.h>

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "sandbox/process/guest_wire.hpp"

namespace channel = sojourn::sandbox::channel;

TEST_CASE("channel messages round-trip through their frames") {
  channel::RunRequest request;
  request.source = "return ...";
  request.chunk_name = "job";
  request.args = sojourn::Value::array({1, "two", 3.5});
  request.limits = sojourn::Limits{1, 2, 3};
  request.allow_jit = true;
  const auto frame = channel::encode_frame(request);
  const auto header = channel::parse_header(std::span<const std::uint8_t, channel::kHeaderBytes>(frame.data(), 5));
  CHECK(header.kind == channel::Kind::run);
  CHECK(header.length == frame.size() - channel::kHeaderBytes);
  auto back = channel::decode_payload<channel::RunRequest>(std::span(frame).subspan(channel::kHeaderBytes));
  REQUIRE(back.ok());
  CHECK(back->source == "return ...");
  CHECK(back->chunk_name == "job");
  CHECK(back->args.get(2).as_string() == "two");
  CHECK(back->limits == sojourn::Limits{1, 2, 3});
  CHECK(back->allow_jit);
}

TEST_CASE("a truncated or padded payload is refused with a message naming the message kind") {
  channel::HostCall call{"kv.get", sojourn::Value::array({"k"})};
  auto frame = channel::encode_frame(call);
  auto payload = std::span(frame).subspan(channel::kHeaderBytes);
  auto truncated = channel::decode_payload<channel::HostCall>(payload.first(payload.size() - 1));
  REQUIRE_FALSE(truncated.ok());
  CHECK(truncated.error().message.rfind("internal error: guest channel: bad host_call message: ", 0) == 0);
  frame.push_back(0);
  auto padded = channel::decode_payload<channel::HostCall>(std::span(frame).subspan(channel::kHeaderBytes));
  REQUIRE_FALSE(padded.ok());
  CHECK(padded.error().message == "internal error: guest channel: bad host_call message: trailing bytes");
}

TEST_CASE("the SIGSYS handler's frame decodes as a seccomp report") {
  const auto frame = channel::seccomp_report_frame(41);
  CHECK(frame[4] == static_cast<std::uint8_t>(channel::Kind::seccomp_report));
  auto report = channel::decode_payload<channel::SeccompReport>(std::span(frame).subspan(channel::kHeaderBytes));
  REQUIRE(report.ok());
  CHECK(report->syscall == 41);
}

TEST_CASE("a value is encoded in place in its frame: its length, then encode_value's bytes") {
  // A 1 MB state between other fields: the layout is a u32 length and the value's bytes, as
  // when the value was encoded on its own and copied in, and the fields after it follow.
  sojourn::Value state = sojourn::Value::table();
  state.set("payload", std::string(1 << 20, 'x'));
  state.set("n", 7);
  for (const sojourn::Value& v : {state, sojourn::Value(), sojourn::Value("short"), sojourn::Value::array({1, 2})}) {
    channel::Encoder e;
    e(std::uint32_t{0xabcdef01});
    e(v);
    e(std::string("after"));
    const std::vector<std::uint8_t>& out = e.bytes();
    const std::vector<std::uint8_t> alone = sojourn::encode_value(v);
    REQUIRE(out.size() == 4 + 4 + alone.size() + 4 + 5);
    std::uint32_t length = 0;
    for (int i = 0; i < 4; ++i) length |= static_cast<std::uint32_t>(out[4 + static_cast<std::size_t>(i)]) << (8 * i);
    CHECK(length == alone.size());
    CHECK(std::equal(alone.begin(), alone.end(), out.begin() + 8));
    channel::Decoder d(out);
    std::uint32_t head = 0;
    sojourn::Value back;
    std::string tail;
    d(head);
    d(back);
    d(tail);
    CHECK(head == 0xabcdef01);
    CHECK(sojourn::deep_equal(back, v));
    CHECK(tail == "after");
  }
}

TEST_CASE("a burst's frames appended in one buffer are the bytes of each frame encoded alone") {
  channel::RunRequest request;
  request.source = "local v = node.call('kv.get', 'k'); return v.x + 1";
  request.chunk_name = "eval";
  request.args = sojourn::Value::array({7, "seven"});
  request.limits = sojourn::Limits{100, 200, 300};
  request.has_host = false;
  channel::CarriedReads reads;
  reads.reads.push_back({"kv.get", "\x01k", sojourn::Value::array({1})});

  std::vector<std::uint8_t> expected = channel::encode_frame(channel::Batch{2});
  for (int i = 0; i < 2; ++i) {
    const auto carried = channel::encode_frame(reads);
    const auto run = channel::encode_frame(request);
    expected.insert(expected.end(), carried.begin(), carried.end());
    expected.insert(expected.end(), run.begin(), run.end());
  }

  std::vector<std::uint8_t> burst;
  channel::append_frame(burst, channel::Batch{2});
  for (int i = 0; i < 2; ++i) {
    if (i == 0) channel::append_frame(burst, reads);
    else channel::append_frame(burst, channel::CarriedReadsView{reads.reads});
    // The view encodes the same fields as RunRequest, in the same order.
    channel::append_frame(burst, channel::RunRequestView{request.source, request.chunk_name, request.args, request.limits,
                                                         request.allow_jit, request.has_host});
  }
  CHECK(burst == expected);

  // The second run frame decodes as the request it was encoded from.
  const std::size_t batch_bytes = channel::kHeaderBytes + 4;
  const std::size_t carried_bytes = channel::encode_frame(reads).size();
  const std::size_t run_at = batch_bytes + 2 * carried_bytes + channel::encode_frame(request).size();
  const auto header = channel::parse_header(std::span<const std::uint8_t, channel::kHeaderBytes>(burst.data() + run_at, 5));
  CHECK(header.kind == channel::Kind::run);
  REQUIRE(run_at + channel::kHeaderBytes + header.length == burst.size());
  auto back = channel::decode_payload<channel::RunRequest>(std::span(burst).subspan(run_at + channel::kHeaderBytes));
  REQUIRE(back.ok());
  CHECK(back->source == request.source);
  CHECK(back->args.get(2).as_string() == "seven");
  CHECK_FALSE(back->has_host);
}
