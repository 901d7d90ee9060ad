// Writes the seed corpus of every fuzz target: valid encodings of each input kind. Run by
// hand when an encoding changes, and commit what it wrote (tests never write into the tree):
//   build-fuzz/tests/fuzz/fuzz_make_seeds tests/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "agents/agent_messages.hpp"
#include "agents/agent_record.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/process/guest_wire.hpp"
#include "sojourn/core/bundle.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"

using namespace sojourn;
namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

fs::path g_root;

void put(const std::string& target, const std::string& name, const Bytes& bytes) {
  fs::create_directories(g_root / target);
  std::ofstream out(g_root / target / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));  // SAFETY: bytes as chars
}

void put(const std::string& target, const std::string& name, const std::string& text) {
  put(target, name, Bytes(text.begin(), text.end()));
}

Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Value cyclic_table() {
  Value cyclic = Value::table();
  Value child = cyclic.new_table();
  child.set("up", cyclic);
  cyclic.set("child", child);
  cyclic.set(1, 2.5);
  cyclic.set(2, std::int64_t{-7});
  cyclic.set("s", std::string(40, 'x'));
  cyclic.set(true, false);
  return cyclic;
}

Value agent_state() {
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
  agent.set("data", cyclic_table());
  return agent;
}

std::vector<Value> values() {
  return {Value(), Value(true), Value(std::int64_t{42}), Value(-0.5), Value(std::string("hello")),
          Value::array({1, "two", 3.0}), cyclic_table(), agent_state()};
}

Bytes frame(FrameKind kind, std::uint64_t id, const Bytes& payload) { return encode_frame(kind, id, payload); }

AgentRecord sample_record() {
  AgentRecord r;
  r.id = std::string(32, 'a');
  r.home = "127.0.0.1:7001";
  r.owner = "alice";
  r.bundle_hash = std::string(64, 'b');
  r.entry = "arrive";
  r.state = agent_state();
  r.epoch = 3;
  r.itinerary = {"127.0.0.1:7002", "127.0.0.1:7003"};
  r.max_hops = 8;
  r.quotas = Limits{100000, 1 << 20, 500};
  r.cpu_left = 5000;
  r.isolation = Isolation::process;
  r.created_unix_ms = 1700000000000;
  r.updated_unix_ms = 1700000001000;
  r.hops = {AgentHop{"127.0.0.1:7002", 2, 1700000000500, 5, 100, "process"}};
  r.hops_reported = 2;  // hops its home holds already (agent protocol 5)
  r.visited = {"127.0.0.1:7001"};
  r.log = {"started", "moved"};
  r.mailbox = {Value("hi")};
  r.delivered = {std::string(32, 'c')};
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  g_root = argv[1];

  const CallRequest call{"kv.put", Value::array({"k", cyclic_table()})};
  EvalRequest eval{"return ...", "chunk", Value::array({1, true, "x"}), Limits{1, 2, 3}, Isolation::process};
  EvalRequest signed_eval = eval;
  signed_eval.signer = std::string(32, 'k');
  signed_eval.signature = std::string(64, 's');
  signed_eval.nonce = std::string(32, 'n');
  signed_eval.expires_unix_ms = 1700000000000;
  const Reply ok = reply_ok(Value::array({agent_state(), cyclic_table()}));
  const Reply failed = reply_error(make_error(Errc::lua_error, "lua error: boom"));
  const ProtocolError perr{Errc::bad_magic, "bad frame magic 0x00000000"};

  // messages_fuzz
  put("messages_fuzz", "call", encode(call));
  put("messages_fuzz", "eval", encode(eval));
  put("messages_fuzz", "eval_signed", encode(signed_eval));
  put("messages_fuzz", "reply_ok", encode(ok));
  put("messages_fuzz", "reply_error", encode(failed));
  put("messages_fuzz", "protocol_error", encode(perr));

  // frame_fuzz: a cut byte, then a stream of frames.
  const Bytes cut{7};
  put("frame_fuzz", "one_call", cut + frame(FrameKind::call, 1, encode(call)));
  put("frame_fuzz", "ping_pong", Bytes{20} + frame(FrameKind::ping, 2, {}) + frame(FrameKind::pong, 2, {}));
  put("frame_fuzz", "stream", Bytes{33} + frame(FrameKind::eval, 3, encode(eval)) + frame(FrameKind::reply, 3, encode(ok)) +
                                  frame(FrameKind::protocol_error, 0, encode(perr)));
  Bytes truncated = frame(FrameKind::reply, 9, encode(failed));
  truncated.resize(truncated.size() - 3);
  put("frame_fuzz", "truncated", cut + truncated);

  // value_fuzz
  int n = 0;
  for (const Value& v : values()) put("value_fuzz", "value" + std::to_string(n++), encode_value(v));

  // json_fuzz
  put("json_fuzz", "object", std::string(R"({"a": 1, "b": [true, false, null], "c": {"d": "e\n\u00e9"}, "f": -1.5e3})"));
  put("json_fuzz", "array", std::string(R"([1, 2, 3, "four", [5, [6, [7]]], {"8": 9}])"));
  put("json_fuzz", "function", std::string(R"({"$function": "function(x) return x end"})"));
  put("json_fuzz", "scalars", std::string(R"("just a string \"quoted\" \\ \/ \t")"));
  put("json_fuzz", "numbers", std::string(R"([0, -0, 9007199254740993, 1e308, 1e-320, 18446744073709551615, 0.1])"));

  // bundle_fuzz
  Bundle multi = single_file_bundle("tour", "local util = require 'util.text'\nreturn { go = function(s) return s end }",
                                    {"go", "arrive"}).value();
  multi.files["util.text.lua"] = "return { upper = string.upper }";
  multi.manifest.version = "1.2";
  multi.manifest.quotas = Limits{1000, 1 << 20, 100};
  multi.manifest.max_hops = 4;
  multi.manifest.cpu_budget = 1000000;
  put("bundle_fuzz", "single", encode_bundle(single_file_bundle("hello", "return 1 + 1").value()));
  put("bundle_fuzz", "multi", encode_bundle(multi));

  // agent_record_fuzz
  AgentRecord record = sample_record();
  put("agent_record_fuzz", "record", encode_value(record_to_value(record)));
  record.cpu_left.reset();
  record.hops.clear();
  record.mailbox.clear();
  record.state = Value::table();
  put("agent_record_fuzz", "record_plain", encode_value(record_to_value(record)));

  // agent_messages_fuzz: one of each message (the first byte names it).
  const std::string id(32, 'a');
  AgentTransfer transfer;
  transfer.record = sample_record();
  transfer.to = "node-0123456789abcdef0123456789abcdef";
  transfer.nonce = std::string(32, 'n');
  transfer.expires_unix_ms = 1700000000000;
  const Bytes multi_bytes = encode_bundle(multi);
  transfer.bundle_bytes = std::string(multi_bytes.begin(), multi_bytes.end());
  put("agent_messages_fuzz", "transfer", encode(transfer));
  // agent.transfer's two arguments, the TRANSFER and the state, as the call's Value.
  put("agent_messages_fuzz", "transfer_call", encode_value(transfer_call_args(transfer)));
  AgentTransfer strong = transfer;  // a strong agent's TRANSFER: its heap image beside the record
  strong.record.mobility = Mobility::strong;
  strong.record.image_sha256 = std::string(64, 'c');
  strong.bundle_bytes.reset();
  const std::vector<std::uint8_t> image_bytes(4096, 0x5a);
  strong.image = std::span<const std::uint8_t>(image_bytes);
  put("agent_messages_fuzz", "transfer_strong", encode(strong));
  put("agent_messages_fuzz", "bundle_wanted", encode(BundleWanted{id, 2, std::string(64, 'b')}));
  put("agent_messages_fuzz", "commit", encode(AgentCommit{id, 2, "127.0.0.1:7401"}));
  put("agent_messages_fuzz", "arrival", encode(ArrivalReport{id, 2, "127.0.0.1:7401", AgentState::running, "", 120,
                                                             "process", "strong", {"m1"}, std::string(32, 't'),
                                                             sample_record().hops}));
  put("agent_messages_fuzz", "arrival_answer",
      encode(ArrivalAnswer{{ForwardedMessage{"m2", agent_state()}}, std::string(32, 't')}));
  put("agent_messages_fuzz", "end", encode(EndReport{id, 3, "127.0.0.1:7402", AgentState::failed, "boom",
                                                     Value::array({1}), sample_record().hops, {"log"}, "t"}));
  put("agent_messages_fuzz", "deliver", encode(AgentDeliver{id, ForwardedMessage{"m3", cyclic_table()}, "t", "p"}));
  AgentStatus status;
  status.id = id;
  status.status = AgentState::stranded;
  status.reason = "destination unreachable";
  status.hops = sample_record().hops;
  put("agent_messages_fuzz", "status", encode(status));
  std::vector<AgentSummary> listed(1);
  listed[0].id = id;
  listed[0].status = AgentState::asleep;
  put("agent_messages_fuzz", "list", encode(listed));
  put("agent_messages_fuzz", "fetch_answer", encode(FetchAnswer{std::string(64, 'b'), std::string("bytes")}));

  // policy_fuzz (key files cannot be read by the target: keys are fingerprints here)
  const std::string fpr(64, '3');
  put("policy_fuzz", "full", std::string(R"({"comment": "c", "keys": {"ops": ")") + fpr + R"("},
 "rules": [{"name": "operators", "signer": "ops", "isolation": ["trusted", "process"]},
  {"name": "alice", "signer": "*", "isolation": ["process", "microvm"],
   "quotas": {"cpu_per_run": 50000000, "cpu_per_hop": 200000000, "memory_bytes": 67108864, "wall_ms": 5000,
              "max_hops": 32, "max_state_bytes": 1048576, "messages_per_second": 200},
   "services": ["kv.*", "node.info"]},
  {"peer": "*", "isolation": ["microvm"], "services": ["kv.get"]},
  {"peer": "node-b", "refuse": true}],
 "default": {"name": "strangers", "isolation": ["microvm", "process"], "quotas": {"cpu_per_run": 1000}, "services": []}})");
  put("policy_fuzz", "key_file", std::string(R"({"keys": {"alice": "keys/alice.crt"}, "rules": [{"signer": "alice"}]})"));
  put("policy_fuzz", "refuse_all", std::string(R"({"default": {"refuse": true}})"));

  // host_channel_fuzz: a mode byte (bit 0: an agent step), then what the guest writes.
  namespace ch = sojourn::sandbox::channel;
  const Bytes run_done = ch::encode_frame(ch::RunDone{{0, "", Value::array({1, "x"})}});
  const Bytes run_error = ch::encode_frame(ch::RunDone{{static_cast<std::uint16_t>(Errc::lua_error), "lua error: x", Value()}});
  const Bytes host_call = ch::encode_frame(ch::HostCall{"kv.get", Value::array({"k"})});
  const Bytes fail_call = ch::encode_frame(ch::HostCall{"fail", Value::table()});
  const Bytes report = ch::encode_frame(ch::SeccompReport{59});
  ch::AgentDone went;
  went.results = Value::array({1});
  went.state = agent_state();
  went.went = true;
  went.go_peer = "127.0.0.1:7002";
  went.go_entry = "arrive";
  went.instructions = 1234;
  put("host_channel_fuzz", "run_done", Bytes{0} + run_done);
  put("host_channel_fuzz", "run_error", Bytes{2} + run_error);
  put("host_channel_fuzz", "calls_then_done", Bytes{4} + host_call + fail_call + host_call + run_done);
  put("host_channel_fuzz", "seccomp_then_close", Bytes{0} + report);
  put("host_channel_fuzz", "agent_went", Bytes{1} + host_call + ch::encode_frame(went));
  const Bytes exited = ch::encode_frame(ch::Exited{7, 100, 1, 0, 5000});
  put("host_channel_fuzz", "exited", Bytes{0} + Bytes(exited.begin() + ch::kHeaderBytes, exited.end()));

  // source_scan_fuzz: the chunk, then three bytes read from the end (chunk's first line 1,
  // last line = first line, first line picked by the last byte: value - 2).
  auto scan = [](const std::string& chunk, std::uint8_t first_line) {
    Bytes b(chunk.begin(), chunk.end());
    b.push_back(2);
    b.push_back(1);
    b.push_back(static_cast<std::uint8_t>(first_line + 2));
    return b;
  };
  put("source_scan_fuzz", "local_function", scan("local function f(a, b)\n  return a + b\nend\nreturn f", 1));
  put("source_scan_fuzz", "method", scan("local T = {}\nfunction T:m(x) return self, x end\nreturn T", 2));
  put("source_scan_fuzz", "nested_one_line", scan("return function() return function() return 1 end end", 1));
  put("source_scan_fuzz", "strings_comments",
      scan("--[==[ function end ]==]\nlocal s = [[function]] .. \"end\\\"\" -- function\nlocal g = function(...) return ... end", 3));
  put("source_scan_fuzz", "cdata", scan("local x = function() return 1LL, 2ULL, 0x10i end", 1));

  // kvm_dispatch_fuzz: its input is read as choices, so a few fixed pseudo-random guests.
  std::mt19937_64 rng(11);
  for (int i = 0; i < 6; ++i) {
    Bytes b(static_cast<std::size_t>(64 << i));
    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    put("kvm_dispatch_fuzz", "guest" + std::to_string(i), b);
  }
  // heap_image_fuzz: a mode byte (bit 0 reseals, bit 1 accepts the declared build and base),
  // then an image of a small arena: zero pages, a page of a pattern, a page with one byte.
  namespace im = sojourn::sandbox::image;
  im::ImageSource source;
  source.guest_build.fill(7);
  source.arena_base = 0x10000000;
  source.arena_bytes = 1 << 20;
  source.agent_handle = source.arena_base + 64;
  Bytes arena(4 * im::kPageBytes, 0);
  for (std::size_t i = 0; i < im::kPageBytes; ++i) arena[im::kPageBytes + i] = static_cast<std::uint8_t>(i * 31);
  arena[3 * im::kPageBytes + 5] = 1;
  const Bytes image = im::take_image(source, arena).value();
  put("heap_image_fuzz", "image_own_build", Bytes{2} + image);
  put("heap_image_fuzz", "image_resealed", Bytes{3} + image);
  put("heap_image_fuzz", "image_other_build", Bytes{0} + image);
  std::printf("seeds written under %s\n", g_root.c_str());
  return 0;
}
