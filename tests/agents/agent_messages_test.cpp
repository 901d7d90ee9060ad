// The agent protocol's messages (agents/agent_messages.*): each round-trips through its codec,
// and truncated, garbage, mislabelled or unknown-state bytes are refused with an error.
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include "agents/agent_messages.hpp"
#include "agents/record_step.hpp"

using namespace sojourn;

namespace {

AgentRecord sample_record() {
  AgentRecord r;
  r.id = std::string(32, 'a');
  r.home = "127.0.0.1:7400";
  r.owner = "alice";
  r.bundle_hash = std::string(64, 'b');
  r.entry = "start";
  r.state = Value::table();
  r.state.set("n", 3);
  r.epoch = 2;
  r.itinerary = {"127.0.0.1:7401"};
  r.max_hops = 8;
  r.quotas.cpu_instructions = 1000;
  r.hops.push_back(AgentHop{"127.0.0.1:7400", 0, 1700000000000, 3, 12, "trusted"});
  r.report_token = std::string(32, 'c');
  return r;
}

Value body() {
  Value v = Value::table();
  v.set("text", "hello");
  v.push(42);
  return v;
}

// Every strict prefix of `bytes` (each one a truncation) and `bytes` with one more byte are
// refused as invalid_argument, naming the message.
template <class T>
void check_refuses_damaged(const std::vector<std::uint8_t>& bytes, Result<T> (*decode)(std::span<const std::uint8_t>),
                           const std::string& kind) {
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    auto r = decode(std::span(bytes.data(), n));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK(r.error().message.rfind("invalid argument: bad agent message: " + kind + ": ", 0) == 0);
  }
  std::vector<std::uint8_t> longer = bytes;
  longer.push_back(0);
  auto r = decode(longer);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message == "invalid argument: bad agent message: " + kind + ": 1 trailing bytes");
}

}  // namespace

TEST_CASE("an agent state's name parses back to it, and an unknown name is refused") {
  for (int i = 0; i <= static_cast<int>(kLastAgentState); ++i) {
    const auto state = static_cast<AgentState>(i);
    auto parsed = parse_agent_state(agent_state_name(state));
    REQUIRE(parsed.ok());
    CHECK(*parsed == state);
  }
  CHECK(agent_state_name(AgentState::queued) == "queued");
  CHECK(agent_state_name(AgentState::asleep) == "asleep");
  auto waiting = parse_agent_state("waiting");
  REQUIRE_FALSE(waiting.ok());
  CHECK(waiting.error().code == Errc::invalid_argument);
  CHECK(waiting.error().message == "invalid argument: unknown agent state waiting");
}

TEST_CASE("the hand-over's messages round-trip and refuse truncated or longer bytes") {
  const BundleWanted wanted{std::string(32, 'a'), 3, std::string(64, 'b')};
  auto wanted_bytes = encode(wanted);
  auto w = decode_bundle_wanted(wanted_bytes);
  REQUIRE(w.ok());
  CHECK((w->id == wanted.id && w->epoch == 3 && w->bundle_hash == wanted.bundle_hash));
  check_refuses_damaged(wanted_bytes, decode_bundle_wanted, "bundle wanted");
  // agent.transfer's answer is either: a BundleWanted, or a COMMIT.
  auto as_reply = decode_transfer_reply(wanted_bytes);
  REQUIRE(as_reply.ok());
  REQUIRE(as_reply->wanted.has_value());
  CHECK(as_reply->wanted->bundle_hash == wanted.bundle_hash);
  CHECK(encode(*as_reply) == wanted_bytes);
  const auto commit_reply = encode(TransferReply{AgentCommit{std::string(32, 'a'), 3, "n"}, std::nullopt});
  CHECK(commit_reply == encode(AgentCommit{std::string(32, 'a'), 3, "n"}));
  auto committed = decode_transfer_reply(commit_reply);
  REQUIRE(committed.ok());
  CHECK_FALSE(committed->wanted.has_value());
  CHECK((committed->commit.id == std::string(32, 'a') && committed->commit.epoch == 3 && committed->commit.node == "n"));
  auto neither = decode_transfer_reply(encode(SendAnswer{"m"}));
  REQUIRE_FALSE(neither.ok());
  CHECK(neither.error().message == "invalid argument: bad agent message: commit: got a send answer");

  AgentTransfer transfer;
  transfer.record = sample_record();
  transfer.to = "node-0123456789abcdef0123456789abcdef";
  transfer.nonce = std::string(32, 'd');
  transfer.expires_unix_ms = 1700000030000;
  transfer.bundle_bytes = std::string("\0bundle", 7);
  auto transfer_bytes = encode(transfer);
  auto t = decode_transfer(transfer_bytes);
  REQUIRE(t.ok());
  CHECK(t->record.id == transfer.record.id);
  CHECK(t->record.epoch == 2);
  CHECK(t->record.itinerary == transfer.record.itinerary);
  CHECK(t->record.report_token == transfer.record.report_token);
  CHECK(t->record.hops.size() == 1);
  // The state is not in the TRANSFER's bytes: it is agent.transfer's second argument.
  CHECK(deep_equal(t->record.state, Value::table()));
  CHECK(transfer.record.state.size() != 0);
  auto called = decode_transfer_call(transfer_call_args(transfer));
  REQUIRE(called.ok());
  CHECK(deep_equal(called->record.state, transfer.record.state));
  CHECK(called->nonce == transfer.nonce);
  CHECK(t->to == transfer.to);
  CHECK(t->nonce == transfer.nonce);
  CHECK(t->expires_unix_ms == transfer.expires_unix_ms);
  CHECK(t->bundle_bytes == transfer.bundle_bytes);
  check_refuses_damaged(transfer_bytes, decode_transfer, "transfer");
  transfer.bundle_bytes.reset();
  auto without = decode_transfer(encode(transfer));
  REQUIRE(without.ok());
  CHECK_FALSE(without->bundle_bytes.has_value());
  // The record's own checks still apply: a bad id is the record's error.
  transfer.record.id = "not an id";
  auto bad_id = decode_transfer(encode(transfer));
  REQUIRE_FALSE(bad_id.ok());

  auto commit = decode_commit(encode(AgentCommit{wanted.id, 3, "127.0.0.1:7401"}));
  REQUIRE(commit.ok());
  CHECK((commit->id == wanted.id && commit->epoch == 3 && commit->node == "127.0.0.1:7401"));
}

TEST_CASE("a strong agent's TRANSFER carries its heap image beside the record that names its hash") {
  AgentTransfer transfer;
  transfer.record = sample_record();
  transfer.record.mobility = Mobility::strong;
  transfer.record.image_sha256 = std::string(64, 'e');
  transfer.record.strong_memory = 64u << 20;
  transfer.record.hops[0].mobility = "strong";
  transfer.record.hops[0].image_raw_bytes = 90112;
  transfer.record.hops[0].image_bytes = 20444;
  transfer.record.hops[0].image_us = 330;
  transfer.record.hops[0].restore_us = 160;
  transfer.to = "node-0123456789abcdef0123456789abcdef";
  transfer.nonce = std::string(32, 'd');
  transfer.expires_unix_ms = 1700000030000;
  const std::string image_bytes("SJHEAPIM\0\1image", 16);
  transfer.image = std::span(reinterpret_cast<const std::uint8_t*>(image_bytes.data()), image_bytes.size());
  auto bytes = encode(transfer);
  auto t = decode_transfer(bytes);
  REQUIRE(t.ok());
  CHECK(t->record.mobility == Mobility::strong);
  CHECK(t->record.image_sha256 == transfer.record.image_sha256);
  CHECK(t->record.strong_memory == 64u << 20);
  REQUIRE(t->image.has_value());
  CHECK(std::string(reinterpret_cast<const char*>(t->image->data()), t->image->size()) == image_bytes);
  // A view of the message's own bytes, not a copy of them.
  CHECK((t->image->data() >= bytes.data() && t->image->data() + t->image->size() <= bytes.data() + bytes.size()));
  // Through agent.transfer's arguments, which are gone once decoded: the image still reads
  // whole, from the bytes the message keeps (received), not from the arguments' graph.
  auto called = decode_transfer_call(transfer_call_args(transfer));
  REQUIRE(called.ok());
  REQUIRE((called->image.has_value() && called->received != nullptr));
  CHECK(std::string(reinterpret_cast<const char*>(called->image->data()), called->image->size()) == image_bytes);
  CHECK((called->image->data() >= reinterpret_cast<const std::uint8_t*>(called->received->data()) &&
         called->image->data() + called->image->size() <=
             reinterpret_cast<const std::uint8_t*>(called->received->data()) + called->received->size()));
  REQUIRE(t->record.hops.size() == 1);
  const AgentHop& hop = t->record.hops[0];
  CHECK((hop.mobility == "strong" && hop.image_raw_bytes == 90112 && hop.image_bytes == 20444 && hop.image_us == 330 &&
         hop.restore_us == 160));
  check_refuses_damaged(bytes, decode_transfer, "transfer");

  // An image beside a record that names none (a weak one, or a strong one not yet imaged).
  transfer.record.image_sha256.clear();
  auto unnamed = decode_transfer(encode(transfer));
  REQUIRE_FALSE(unnamed.ok());
  CHECK(unnamed.error().message == "invalid argument: bad agent message: transfer: a heap image for a record that names none");
  // An image hash on a weak record is the record's error.
  transfer.record.mobility = Mobility::weak;
  transfer.record.image_sha256 = std::string(64, 'e');
  transfer.image.reset();
  auto weak = decode_transfer(encode(transfer));
  REQUIRE_FALSE(weak.ok());
  CHECK(weak.error().message == "invalid argument: agent record has an invalid image hash");
  // The launch names the mobility; an unknown one is refused.
  AgentLaunchRequest launch;
  launch.bundle_bytes = "b";
  launch.mobility = Mobility::strong;
  auto launch_bytes = encode(launch);
  auto l = decode_launch(launch_bytes);
  REQUIRE(l.ok());
  CHECK(l->mobility == Mobility::strong);
  launch_bytes.back() = 7;
  auto unknown = decode_launch(launch_bytes);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message == "invalid argument: bad agent message: launch: unknown mobility 7");
  CHECK(parse_mobility("strong").ok());
  CHECK(parse_mobility("teleport").error().message == "invalid argument: unknown mobility teleport (weak or strong)");
}

TEST_CASE("the reports to the home round-trip, and refuse a state they cannot carry") {
  ArrivalReport arrival;
  arrival.id = std::string(32, 'a');
  arrival.epoch = 4;
  arrival.node = "127.0.0.1:7402";
  arrival.state_bytes = 17;
  arrival.isolation = "process";
  arrival.mobility = "strong";
  arrival.delivered = {"m1", "m2"};
  arrival.token = "tok";
  auto arrival_bytes = encode(arrival);
  auto a = decode_arrival(arrival_bytes);
  REQUIRE(a.ok());
  CHECK((a->id == arrival.id && a->epoch == 4 && a->node == arrival.node && a->state == AgentState::running));
  CHECK((a->state_bytes == 17 && a->isolation == "process" && a->delivered == arrival.delivered && a->token == "tok"));
  CHECK(a->mobility == "strong");
  check_refuses_damaged(arrival_bytes, decode_arrival, "arrival");
  arrival.state = AgentState::finished;
  auto finished_arrival = decode_arrival(encode(arrival));
  REQUIRE_FALSE(finished_arrival.ok());
  CHECK(finished_arrival.error().message ==
        "invalid argument: bad agent message: arrival: agent state finished is not allowed here");

  ArrivalAnswer answer{{ForwardedMessage{"m3", body()}}, "next"};
  auto answer_bytes = encode(answer);
  auto aa = decode_arrival_answer(answer_bytes);
  REQUIRE(aa.ok());
  REQUIRE(aa->messages.size() == 1);
  CHECK(aa->messages[0].message_id == "m3");
  CHECK(deep_equal(aa->messages[0].body, body()));
  CHECK(aa->token == "next");
  check_refuses_damaged(answer_bytes, decode_arrival_answer, "arrival answer");

  EndReport end;
  end.id = arrival.id;
  end.epoch = 5;
  end.node = "127.0.0.1:7403";
  end.state = AgentState::failed;
  end.reason = "out of budget";
  end.result = Value::array({"r"});
  end.hops = sample_record().hops;
  end.log = {"a line"};
  end.token = "tok";
  auto end_bytes = encode(end);
  auto e = decode_end(end_bytes);
  REQUIRE(e.ok());
  CHECK((e->state == AgentState::failed && e->reason == end.reason && e->log == end.log && e->token == "tok"));
  REQUIRE(e->hops.size() == 1);
  CHECK((e->hops[0].node == end.hops[0].node && e->hops[0].arrived_unix_ms == end.hops[0].arrived_unix_ms &&
         e->hops[0].isolation == "trusted"));
  CHECK(deep_equal(e->result, end.result));
  check_refuses_damaged(end_bytes, decode_end, "end report");
  // A state number past the last one: the byte after the node's string is the state (after
  // Cereal's endianness byte, the kind and the version).
  std::vector<std::uint8_t> unknown = end_bytes;
  const std::size_t state_at = 3 + 4 + end.id.size() + 8 + 4 + end.node.size();
  REQUIRE(unknown[state_at] == static_cast<std::uint8_t>(AgentState::failed));
  unknown[state_at] = 200;
  auto u = decode_end(unknown);
  REQUIRE_FALSE(u.ok());
  CHECK(u.error().message == "invalid argument: bad agent message: end report: unknown agent state 200");
}

TEST_CASE("messages to an agent, status, list, wait, launch and fetch round-trip") {
  AgentSend send{std::string(32, 'a'), "m1", "127.0.0.1:7400", body()};
  auto s = decode_send(encode(send));
  REQUIRE(s.ok());
  CHECK((s->id == send.id && s->message_id == "m1" && s->from == send.from && deep_equal(s->body, body())));
  check_refuses_damaged(encode(send), decode_send, "send");
  auto sa = decode_send_answer(encode(SendAnswer{"m1"}));
  REQUIRE(sa.ok());
  CHECK(sa->message_id == "m1");

  AgentDeliver deliver{send.id, ForwardedMessage{"m1", body()}, "tok", "old"};
  auto d = decode_deliver(encode(deliver));
  REQUIRE(d.ok());
  CHECK((d->id == send.id && d->message.message_id == "m1" && d->token == "tok" && d->previous == "old"));
  check_refuses_damaged(encode(deliver), decode_deliver, "deliver");

  AgentStatus status;
  status.id = send.id;
  status.home = "h";
  status.owner = "o";
  status.location = "l";
  status.epoch = 6;
  status.status = AgentState::stranded;
  status.reason = "destination unreachable";
  status.result = Value::table();
  status.hops = sample_record().hops;
  status.log = {"x"};
  status.pending_messages = 2;
  auto st = decode_status(encode(status));
  REQUIRE(st.ok());
  CHECK((st->status == AgentState::stranded && st->reason == status.reason && st->pending_messages == 2 &&
         st->location == "l" && st->epoch == 6 && st->hops.size() == 1 && st->log == status.log));
  check_refuses_damaged(encode(status), decode_status, "status");

  std::vector<AgentSummary> list(2);
  list[0].id = send.id;
  list[0].status = AgentState::asleep;
  list[1].id = std::string(32, 'e');
  list[1].status = AgentState::stranded;
  list[1].reason = "why";
  list[1].since_unix_ms = 1700000000000;
  auto l = decode_list(encode(list));
  REQUIRE(l.ok());
  REQUIRE(l->size() == 2);
  CHECK(((*l)[0].status == AgentState::asleep && (*l)[1].reason == "why" && (*l)[1].since_unix_ms == 1700000000000));
  check_refuses_damaged(encode(list), decode_list, "list");

  auto w = decode_wait_query(encode(WaitQuery{send.id, 250}));
  REQUIRE(w.ok());
  CHECK((w->id == send.id && w->wait_ms == 250));

  AgentLaunchRequest launch;
  launch.bundle_bytes = "bytes";
  launch.entry = "start";
  launch.state = body();
  launch.itinerary = {"a", "b"};
  launch.owner = "alice";
  launch.max_hops = 3;
  launch.signer = "k";
  launch.signature = "s";
  auto la = decode_launch(encode(launch));
  REQUIRE(la.ok());
  CHECK((la->bundle_bytes == "bytes" && la->itinerary == launch.itinerary && la->max_hops == 3 && la->signer == "k" &&
         la->signature == "s" && deep_equal(la->state, body())));
  check_refuses_damaged(encode(launch), decode_launch, "launch");
  auto lan = decode_launch_answer(encode(AgentLaunchAnswer{send.id, "h"}));
  REQUIRE(lan.ok());
  CHECK((lan->id == send.id && lan->home == "h"));

  auto fq = decode_fetch_query(encode(FetchQuery{"mod", "", "have"}));
  REQUIRE(fq.ok());
  CHECK((fq->module == "mod" && fq->hash.empty() && fq->have == "have"));
  auto fa = decode_fetch_answer(encode(FetchAnswer{"h", std::string("b")}));
  REQUIRE(fa.ok());
  CHECK((fa->hash == "h" && fa->bundle_bytes == std::optional<std::string>("b")));
  check_refuses_damaged(encode(FetchAnswer{"h", std::nullopt}), decode_fetch_answer, "fetch answer");
}

TEST_CASE("one message's bytes are not another's, nor another version's, nor a non-string argument") {
  auto commit_bytes = encode(AgentCommit{std::string(32, 'a'), 1, "n"});
  auto as_wanted = decode_bundle_wanted(commit_bytes);
  REQUIRE_FALSE(as_wanted.ok());
  CHECK(as_wanted.error().message == "invalid argument: bad agent message: bundle wanted: got a commit");
  // Protocol 3's OFFER (kind 3, version 3), as an older source sends it: named, and refused
  // for its version.
  std::vector<std::uint8_t> old_offer = commit_bytes;
  old_offer[1] = static_cast<std::uint8_t>(AgentMessageKind::retired_offer);
  auto offered = decode_transfer(old_offer);
  REQUIRE_FALSE(offered.ok());
  CHECK(offered.error().message == "invalid argument: bad agent message: transfer: got a protocol 3 offer");
  std::vector<std::uint8_t> old_transfer = encode(AgentCommit{std::string(32, 'a'), 1, "n"});
  old_transfer[2] = 3;
  auto older = decode_commit(old_transfer);
  REQUIRE_FALSE(older.ok());
  CHECK(older.error().message == "invalid argument: bad agent message: commit: agent protocol version 3 (this node speaks " +
                                    std::to_string(kAgentProtocolVersion) + ")");
  std::vector<std::uint8_t> garbage = {commit_bytes[0], 0xff, 0x01, 0x02};
  auto g = decode_commit(garbage);
  REQUIRE_FALSE(g.ok());
  CHECK(g.error().message == "invalid argument: bad agent message: commit: unknown message kind 255");
  std::vector<std::uint8_t> future = commit_bytes;
  future[2] = kAgentProtocolVersion + 1;  // after Cereal's endianness byte and the kind
  auto f = decode_commit(future);
  REQUIRE_FALSE(f.ok());
  CHECK(f.error().message == "invalid argument: bad agent message: commit: agent protocol version " +
                                 std::to_string(kAgentProtocolVersion + 1) + " (this node speaks " +
                                 std::to_string(kAgentProtocolVersion) + ")");
  // A huge count with nothing after it is refused before anything is allocated for it.
  std::vector<std::uint8_t> huge = {commit_bytes[0], static_cast<std::uint8_t>(AgentMessageKind::list_answer),
                                    kAgentProtocolVersion, 0xff, 0xff, 0xff, 0x7f};
  auto h = decode_list(huge);
  REQUIRE_FALSE(h.ok());
  CHECK(h.error().code == Errc::invalid_argument);
  // The service-call wrapping: a table where the bytes belong is refused.
  auto table = decode_message<AgentCommit, decode_commit>(Value::table(), "the COMMIT");
  REQUIRE_FALSE(table.ok());
  CHECK(table.error().message == "invalid argument: bad agent message: the COMMIT is not a binary string");
  auto wrapped = decode_message<AgentCommit, decode_commit>(message_value(commit_bytes), "the COMMIT");
  REQUIRE(wrapped.ok());
  CHECK(wrapped->node == "n");
}

TEST_CASE("a TRANSFER carries every field of the record, the hops its home has not acknowledged and a count of the others") {
  AgentTransfer transfer;
  transfer.record = sample_record();
  AgentRecord& r = transfer.record;
  r.quotas = Limits{5000, 1u << 20, 250};
  r.cpu_left = 4000;
  r.signer = std::string(32, 'k');
  r.signature = std::string(64, 's');
  r.isolation = Isolation::process;
  r.created_unix_ms = 1700000000000;
  r.updated_unix_ms = 1700000000900;
  r.hops.push_back(AgentHop{"127.0.0.1:7401", 1, 1700000000400, 7, 30, "process"});
  r.hops.push_back(AgentHop{"127.0.0.1:7402", 2, 1700000000800, 0, 31, "process"});
  drop_reported_hops(r, 1);
  r.log = {"one", "two"};
  r.mailbox = {body(), Value(7)};
  r.delivered = {"m1"};
  r.launcher = "local";
  r.strong_memory = 0;
  auto bytes = encode(transfer);
  auto t = decode_transfer(bytes);
  REQUIRE(t.ok());
  const AgentRecord& got = t->record;
  CHECK((got.quotas.cpu_instructions == 5000 && got.quotas.memory_bytes == (1u << 20) && got.quotas.wall_ms == 250));
  CHECK(got.cpu_left == std::optional<std::uint64_t>(4000));
  CHECK(t->state_bytes == encode_value(Value::table()).size());  // the bytes alone: an empty state
  auto called = decode_transfer_call(transfer_call_args(transfer));
  REQUIRE(called.ok());
  CHECK(called->state_bytes == encode_value(r.state).size());  // the arrival's hop figure, measured as it came
  CHECK(deep_equal(called->record.state, r.state));
  CHECK((got.signer == r.signer && got.signature == r.signature));
  CHECK(got.isolation == Isolation::process);
  CHECK((got.created_unix_ms == r.created_unix_ms && got.updated_unix_ms == r.updated_unix_ms));
  REQUIRE(got.hops.size() == 2);
  CHECK((got.hops[0].epoch == 1 && got.hops[0].spent_ms == 7 && got.hops[1].node == "127.0.0.1:7402"));
  CHECK(got.hops_reported == 1);
  CHECK(got.visited == std::vector<std::string>{"127.0.0.1:7400"});
  CHECK(got.log == r.log);
  REQUIRE(got.mailbox.size() == 2);
  CHECK((deep_equal(got.mailbox[0], body()) && got.mailbox[1].as_integer() == 7));
  CHECK((got.delivered == r.delivered && got.launcher == "local"));
  CHECK(encode(*t) == bytes);
  check_refuses_damaged(bytes, decode_transfer, "transfer");

  // The record as its durable row (a Value table) keeps the same fields.
  auto row = record_from_value(record_to_value(r));
  REQUIRE(row.ok());
  CHECK((row->hops_reported == 1 && row->visited == r.visited && row->hops.size() == 2));

  // An isolation level this node does not know is refused by name.
  AgentTransfer plain;
  plain.record = sample_record();
  auto plain_bytes = encode(plain);
  AgentTransfer probe = plain;
  probe.record.isolation = Isolation::microvm;
  auto probe_bytes = encode(probe);
  std::size_t at = 0;
  while (at < plain_bytes.size() && plain_bytes[at] == probe_bytes[at]) ++at;
  REQUIRE(at < plain_bytes.size());
  probe_bytes[at] = 9;
  auto unknown = decode_transfer(probe_bytes);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message == "invalid argument: bad agent message: transfer: unknown isolation level 9");
}

TEST_CASE("a record sheds the hops its home acknowledged but never its current one, and the home merges them by epoch") {
  AgentRecord r = sample_record();
  r.hops.push_back(AgentHop{"127.0.0.1:7401", 1, 1700000000400, 7, 30, "process"});
  r.hops.push_back(AgentHop{"127.0.0.1:7400", 2, 1700000000800, 0, 31, "process"});
  drop_reported_hops(r, 10);  // more than it holds: the current hop stays
  REQUIRE(r.hops.size() == 1);
  CHECK(r.hops[0].epoch == 2);
  CHECK(r.hops_reported == 2);
  CHECK(r.visited == std::vector<std::string>{"127.0.0.1:7400", "127.0.0.1:7401"});  // each node once

  // The home's itinerary: arrival hops (figures not final), then the holder's final ones.
  std::vector<AgentHop> home = {AgentHop{"a", 0, 10, 0, 1, "trusted"}, AgentHop{"b", 1, 20, 0, 2, "trusted"},
                                AgentHop{"c", 3, 40, 0, 4, "trusted"}};
  merge_hops(home, {AgentHop{"b", 1, 21, 9, 2, "trusted"}, AgentHop{"d", 2, 30, 5, 3, "trusted"},
                    AgentHop{"e", 9, 90, 0, 9, "trusted"}},  // past the report's epoch: ignored
             3);
  REQUIRE(home.size() == 4);
  CHECK((home[1].node == "b" && home[1].spent_ms == 9));  // replaced: the holder's figures
  CHECK((home[2].node == "d" && home[2].epoch == 2));     // a hop the home never heard of, in its place
  CHECK(home[3].node == "c");

  // An arrival report carries the hops before the current visit's.
  ArrivalReport report;
  report.id = r.id;
  report.epoch = 3;
  report.node = "n";
  report.finished_hops = {AgentHop{"b", 1, 21, 9, 2, "trusted"}};
  auto bytes = encode(report);
  auto back = decode_arrival(bytes);
  REQUIRE(back.ok());
  REQUIRE(back->finished_hops.size() == 1);
  CHECK((back->finished_hops[0].node == "b" && back->finished_hops[0].spent_ms == 9));
  check_refuses_damaged(bytes, decode_arrival, "arrival");
}

TEST_CASE("a step's copy of a record leaves out the trail, mailbox, log, delivered ids and visits, and the record keeps them") {
  AgentRecord r = sample_record();
  r.hops.push_back(AgentHop{"127.0.0.1:7401", 1, 1700000000400, 7, 30, "process"});
  r.hops.push_back(AgentHop{"127.0.0.1:7402", 2, 1700000000800, 0, 31, "process"});
  drop_reported_hops(r, 1);
  r.log = {"one", "two"};
  r.mailbox = {Value(7)};
  r.delivered = {"m1"};
  r.itinerary = {"127.0.0.1:7403"};
  r.state.set("x", 5);
  const AgentRecord before = r;
  const AgentRecord step = copy_for_step(r);
  CHECK((step.id == r.id && step.home == r.home && step.entry == r.entry && step.epoch == r.epoch));
  CHECK((step.itinerary == r.itinerary && step.signer == r.signer && step.isolation == r.isolation));
  CHECK((step.cpu_left == r.cpu_left && step.max_hops == r.max_hops && step.hops_reported == r.hops_reported));
  CHECK(step.state.get("x").as_integer() == 5);
  CHECK((step.hops.empty() && step.mailbox.empty() && step.log.empty() && step.delivered.empty() && step.visited.empty()));
  // The record itself is whole again.
  CHECK(encode_value(record_to_value(r)) == encode_value(record_to_value(before)));
  CHECK((r.hops.size() == before.hops.size() && r.log == before.log && r.mailbox.size() == 1 &&
         r.delivered == before.delivered && r.visited == before.visited));
  CHECK((!r.hops.empty() && !r.visited.empty()));
}
