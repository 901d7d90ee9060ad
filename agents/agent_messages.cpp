// The agent protocol's hand-over between nodes (launch, TRANSFER, image parts, commit, arrival,
// end, send, deliver): each message as Cereal portable binary, kind, version, then the fields
// in order (agent_codec.hpp); the clients' queries are in agent_queries.cpp.
#include "agents/agent_messages.hpp"

#include "agents/agent_codec.hpp"

namespace sojourn {

using namespace agent_codec;

namespace {

// The record field by field, all but its state (which rides beside the TRANSFER, as the
// call's second argument): no Value table of the record is built on either side (a TRANSFER
// is most of a hop's work). check_record judges the result.
template <class W>
void write_record(W& w, const AgentRecord& a) {
  w.string(a.id);
  w.string(a.home);
  w.string(a.owner);
  w.string(a.bundle_hash);
  w.string(a.entry);
  w.u64(a.epoch);
  write_strings(w, a.itinerary);
  w.u32(a.max_hops);
  wire::write_limits(w, a.quotas);
  w.u8(a.cpu_left ? 1 : 0);
  if (a.cpu_left) w.u64(*a.cpu_left);
  w.string(a.signer);
  w.string(a.signature);
  w.u8(static_cast<std::uint8_t>(a.isolation));
  w.i64(a.created_unix_ms);
  w.i64(a.updated_unix_ms);
  write_hops(w, a.hops);
  w.u64(a.hops_reported);
  write_strings(w, a.visited);
  write_strings(w, a.log);
  w.u32(static_cast<std::uint32_t>(a.mailbox.size()));
  for (const Value& m : a.mailbox) wire::write_value(w, m);
  write_strings(w, a.delivered);
  w.string(a.launcher);
  w.string(a.report_token);
  write_mobility(w, a.mobility);
  w.string(a.image_sha256);
  w.u64(a.strong_memory);
}
AgentRecord read_record(Reader& r) {
  AgentRecord a;
  a.id = r.string();
  a.home = r.string();
  a.owner = r.string();
  a.bundle_hash = r.string();
  a.entry = r.string();
  a.epoch = r.u64();
  a.itinerary = read_strings(r, "itinerary");
  a.max_hops = r.u32();
  a.quotas = wire::read_limits(r);
  const std::uint8_t has_cpu_left = r.u8();
  if (has_cpu_left > 1) throw DecodeError("bad presence flag " + std::to_string(has_cpu_left));
  if (has_cpu_left == 1) a.cpu_left = r.u64();
  a.signer = r.string();
  a.signature = r.string();
  const std::uint8_t isolation = r.u8();
  if (isolation > static_cast<std::uint8_t>(Isolation::microvm)) {
    throw DecodeError("unknown isolation level " + std::to_string(isolation));
  }
  a.isolation = static_cast<Isolation>(isolation);
  a.created_unix_ms = r.i64();
  a.updated_unix_ms = r.i64();
  a.hops = read_hops(r);
  a.hops_reported = r.u64();
  a.visited = read_strings(r, "visited node");
  a.log = read_strings(r, "log line");
  a.mailbox.resize(r.count(17, "mailbox message"));  // a Value's four counts and root tag at least
  for (Value& m : a.mailbox) m = wire::read_value(r);
  a.delivered = read_strings(r, "delivered id");
  a.launcher = r.string();
  a.report_token = r.string();
  a.mobility = read_mobility(r);
  a.image_sha256 = r.string();
  a.strong_memory = r.u64();
  return a;
}

}  // namespace

AgentMessageBytes encode(const AgentLaunchRequest& m) {
  Writer w;
  start(w, AgentMessageKind::launch);
  w.string(m.bundle_bytes);
  w.string(m.entry);
  wire::write_value(w, m.state);
  write_strings(w, m.itinerary);
  w.string(m.owner);
  w.u32(m.max_hops);
  w.string(m.signer);
  w.string(m.signature);
  write_mobility(w, m.mobility);
  return w.take();
}
Result<AgentLaunchRequest> decode_launch(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::launch, [](Reader& r) {
    AgentLaunchRequest m;
    m.bundle_bytes = r.string();
    m.entry = r.string();
    m.state = wire::read_value(r);
    m.itinerary = read_strings(r, "itinerary");
    m.owner = r.string();
    m.max_hops = r.u32();
    m.signer = r.string();
    m.signature = r.string();
    m.mobility = read_mobility(r);
    return m;
  });
}

AgentMessageBytes encode(const AgentLaunchAnswer& m) {
  Writer w;
  start(w, AgentMessageKind::launch_answer);
  w.string(m.id);
  w.string(m.home);
  return w.take();
}
Result<AgentLaunchAnswer> decode_launch_answer(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::launch_answer, [](Reader& r) {
    AgentLaunchAnswer m;
    m.id = r.string();
    m.home = r.string();
    return m;
  });
}

namespace {
template <class W>
void write_transfer(W& w, const AgentTransfer& m) {
  start(w, AgentMessageKind::transfer);
  write_record(w, m.record);
  w.string(m.to);
  w.string(m.nonce);
  w.i64(m.expires_unix_ms);
  write_optional(w, m.bundle_bytes);
  // The image's bytes as an optional string field, written from where they lie.
  w.u8(m.image ? 1 : 0);
  // SAFETY: the span's bytes are read as chars of the same size, within its bounds.
  if (m.image) w.string(std::string_view(reinterpret_cast<const char*>(m.image->data()), m.image->size()));
}

// {text}: a call's argument array, the text moved into it (Value::array would copy it into
// the table's graph: a second copy of a 1 MB state or image piece).
Value string_args(std::string text) {
  Value args = Value::table();
  args.graph()->tables[0].array.emplace_back(std::move(text));
  return args;
}
}  // namespace

AgentMessageBytes encode(const AgentTransfer& m) {
  Writer w;
  write_transfer(w, m);
  return w.take();
}

Value transfer_args(const AgentTransfer& m, std::size_t& bytes, std::mutex& graph_lock) {
  StringWriter w;
  write_transfer(w, m);
  std::string text = w.take();
  const Value& state = m.record.state;
  if (!state.is_table()) {  // a record without a state table carries an empty one
    Value args = string_args(std::move(text));
    args.push(Value::table());
    bytes = wire::encoded_size(args);
    return args;
  }
  Value args;
  {
    std::lock_guard lock(graph_lock);
    args = state.new_table();  // in the state's graph: the state is referenced, not copied
    auto& items = args.graph()->tables[std::get<detail::TableRef>(args.slot()).index].array;
    items.emplace_back(std::move(text));
    items.push_back(state.slot());
  }
  // What the arguments take in the call's frame, measured (read only), not encoded: the
  // frame encodes them once.
  bytes = wire::encoded_size(args);
  return args;
}
Value transfer_call_args(const AgentTransfer& m) {
  StringWriter w;
  write_transfer(w, m);
  Value args = string_args(w.take());
  args.push(m.record.state.is_table() ? m.record.state : Value::table());  // copied into args' graph
  return args;
}
std::size_t encoded_value_size(const Value& v) { return wire::encoded_size(v); }
void release_transfer_args(Value& args, std::mutex& graph_lock) {
  if (!args.is_table()) return;
  std::lock_guard lock(graph_lock);
  args.graph()->tables[std::get<detail::TableRef>(args.slot()).index].array.clear();
  args = Value{};
}

namespace {
Result<AgentTransfer> decode_transfer_with(std::span<const std::uint8_t> bytes, Value state) {
  auto m = decode_as(bytes, AgentMessageKind::transfer, [](Reader& r) {
    AgentTransfer t;
    t.record = read_record(r);
    t.to = r.string();
    t.nonce = r.string();
    t.expires_unix_ms = r.i64();
    t.bundle_bytes = read_optional(r);
    const std::uint8_t image_present = r.u8();
    if (image_present > 1) throw DecodeError("bad presence flag " + std::to_string(image_present));
    if (image_present == 1) t.image = r.string_view();  // a view of `bytes`: no copy
    return t;
  });
  if (!m) return m.error();
  m->record.state = std::move(state);
  m->state_bytes = m->record.state.is_table() ? wire::encoded_size(m->record.state) : 0;
  // The record's own checks (agent_record.cpp), with their own errors.
  if (auto checked = check_record(m->record); !checked) return checked.error();
  // The image belongs to a strong record and to nothing else; its hash is the record's.
  if (m->image && (m->record.mobility != Mobility::strong || m->record.image_sha256.empty())) {
    return errors::invalid_argument("bad agent message: transfer: a heap image for a record that names none");
  }
  return m;
}
}  // namespace

Result<AgentTransfer> decode_transfer(std::span<const std::uint8_t> bytes) {
  return decode_transfer_with(bytes, Value::table());
}
Result<AgentTransfer> decode_transfer_call(const Value& args) {
  if (auto bytes = first_argument_bytes(args, "agent.transfer's argument"); !bytes) return bytes.error();
  // The TRANSFER's bytes leave the arguments' graph first, into a buffer the message keeps:
  // the views decoded from them (the heap image) then stay valid for the message's life,
  // while the state, which stays in the graph, does not keep them alive.
  auto& items = args.graph()->tables[std::get<detail::TableRef>(args.slot()).index];
  auto received = std::make_shared<const std::string>(std::move(std::get<std::string>(items.array.front())));
  items.array.front() = std::string();
  // SAFETY: the string's bytes, viewed as unsigned bytes of the same size, owned by `received`.
  const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(received->data()), received->size());
  // Exactly {TRANSFER, state}: checked after the TRANSFER's own kind and version, so that a
  // node of an older protocol (one argument) hears about the version.
  const bool two = items.array.size() == 2 && items.map.empty();
  Value state = two ? Value::from_slot(args.graph(), items.array[1]) : Value{};
  auto m = decode_transfer_with(bytes, two && state.is_table() ? state : Value::table());
  if (!m) return m.error();
  m->received = std::move(received);
  if (!two) {
    return errors::invalid_argument("bad agent message: transfer: agent.transfer takes two arguments, the TRANSFER and "
                                    "the agent's state");
  }
  if (!state.is_table()) {
    return errors::invalid_argument("bad agent message: transfer: the agent's state (the second argument) is not a table");
  }
  // The state stays in the arguments' graph (not copied out).
  return m;
}

namespace {

// An image part's fields before its bytes, with the bytes' length: the bytes follow as they
// are (the layout of a string field), so the piece can be appended where the message goes.
AgentMessageBytes image_part_head(const ImagePart& m) {
  Writer w;
  start(w, AgentMessageKind::image_part);
  w.string(m.id);
  w.u64(m.epoch);
  w.string(m.image_sha256);
  w.u64(m.total_bytes);
  w.u64(m.offset);
  w.u32(static_cast<std::uint32_t>(m.bytes.size()));
  return w.take();
}

}  // namespace

AgentMessageBytes encode(const ImagePart& m) {
  AgentMessageBytes out = image_part_head(m);
  out.insert(out.end(), m.bytes.begin(), m.bytes.end());
  return out;
}

Value image_part_args(const ImagePart& m) {
  const AgentMessageBytes head = image_part_head(m);
  std::string text;
  text.reserve(head.size() + m.bytes.size());
  // SAFETY: both are read as chars of the same size, within their own bounds.
  text.append(reinterpret_cast<const char*>(head.data()), head.size());
  text.append(reinterpret_cast<const char*>(m.bytes.data()), m.bytes.size());
  return string_args(std::move(text));
}
Result<ImagePart> decode_image_part(std::span<const std::uint8_t> bytes) {
  auto m = decode_as(bytes, AgentMessageKind::image_part, [](Reader& r) {
    ImagePart p;
    p.id = r.string();
    p.epoch = r.u64();
    p.image_sha256 = r.string();
    p.total_bytes = r.u64();
    p.offset = r.u64();
    p.bytes = r.string_view();  // a view of `bytes`: the piece is copied once, where it is placed
    return p;
  });
  if (!m) return m.error();
  if (m->bytes.empty() || m->offset > m->total_bytes || m->bytes.size() > m->total_bytes - m->offset) {
    return errors::invalid_argument("bad agent message: image part: " + std::to_string(m->bytes.size()) +
                                    " bytes at offset " + std::to_string(m->offset) + " of an image of " +
                                    std::to_string(m->total_bytes));
  }
  return m;
}

AgentMessageBytes encode(const AgentCommit& m) {
  Writer w;
  start(w, AgentMessageKind::commit);
  w.string(m.id);
  w.u64(m.epoch);
  w.string(m.node);
  return w.take();
}
Result<AgentCommit> decode_commit(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::commit, [](Reader& r) {
    AgentCommit m;
    m.id = r.string();
    m.epoch = r.u64();
    m.node = r.string();
    return m;
  });
}

AgentMessageBytes encode(const BundleWanted& m) {
  Writer w;
  start(w, AgentMessageKind::bundle_wanted);
  w.string(m.id);
  w.u64(m.epoch);
  w.string(m.bundle_hash);
  return w.take();
}
Result<BundleWanted> decode_bundle_wanted(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::bundle_wanted, [](Reader& r) {
    BundleWanted m;
    m.id = r.string();
    m.epoch = r.u64();
    m.bundle_hash = r.string();
    return m;
  });
}

AgentMessageBytes encode(const TransferReply& m) {
  if (m.wanted) return encode(*m.wanted);
  return encode(m.commit);
}
Result<TransferReply> decode_transfer_reply(std::span<const std::uint8_t> bytes) {
  // The kind follows Cereal's one endianness byte; anything else is read as a COMMIT, whose
  // decoder names what it got instead.
  TransferReply reply;
  if (bytes.size() >= 2 && bytes[1] == static_cast<std::uint8_t>(AgentMessageKind::bundle_wanted)) {
    auto wanted = decode_bundle_wanted(bytes);
    if (!wanted) return wanted.error();
    reply.wanted = std::move(*wanted);
    return reply;
  }
  auto commit = decode_commit(bytes);
  if (!commit) return commit.error();
  reply.commit = std::move(*commit);
  return reply;
}

AgentMessageBytes encode(const ArrivalReport& m) {
  Writer w;
  start(w, AgentMessageKind::arrival);
  w.string(m.id);
  w.u64(m.epoch);
  w.string(m.node);
  write_state(w, m.state);
  w.string(m.reason);
  w.u64(m.state_bytes);
  w.string(m.isolation);
  w.string(m.mobility);
  write_strings(w, m.delivered);
  w.string(m.token);
  write_hops(w, m.finished_hops);
  return w.take();
}
Result<ArrivalReport> decode_arrival(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::arrival, [](Reader& r) {
    ArrivalReport m;
    m.id = r.string();
    m.epoch = r.u64();
    m.node = r.string();
    m.state = read_state(r);
    expect_state(m.state, AgentState::running, AgentState::stranded);
    m.reason = r.string();
    m.state_bytes = r.u64();
    m.isolation = r.string();
    m.mobility = r.string();
    m.delivered = read_strings(r, "delivered id");
    m.token = r.string();
    m.finished_hops = read_hops(r);
    return m;
  });
}

AgentMessageBytes encode(const ArrivalAnswer& m) {
  Writer w;
  start(w, AgentMessageKind::arrival_answer);
  w.u32(static_cast<std::uint32_t>(m.messages.size()));
  for (const auto& f : m.messages) write_forwarded(w, f);
  w.string(m.token);
  return w.take();
}
Result<ArrivalAnswer> decode_arrival_answer(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::arrival_answer, [](Reader& r) {
    ArrivalAnswer m;
    // An id's length and a Value's four counts and root tag at least.
    m.messages.resize(r.count(21, "message"));
    for (auto& f : m.messages) f = read_forwarded(r);
    m.token = r.string();
    return m;
  });
}

AgentMessageBytes encode(const EndReport& m) {
  Writer w;
  start(w, AgentMessageKind::end);
  w.string(m.id);
  w.u64(m.epoch);
  w.string(m.node);
  write_state(w, m.state);
  w.string(m.reason);
  wire::write_value(w, m.result);
  write_hops(w, m.hops);
  write_strings(w, m.log);
  w.string(m.token);
  return w.take();
}
Result<EndReport> decode_end(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::end, [](Reader& r) {
    EndReport m;
    m.id = r.string();
    m.epoch = r.u64();
    m.node = r.string();
    m.state = read_state(r);
    expect_state(m.state, AgentState::finished, AgentState::failed);
    m.reason = r.string();
    m.result = wire::read_value(r);
    m.hops = read_hops(r);
    m.log = read_strings(r, "log line");
    m.token = r.string();
    return m;
  });
}

AgentMessageBytes encode(const AgentSend& m) {
  Writer w;
  start(w, AgentMessageKind::send);
  w.string(m.id);
  w.string(m.message_id);
  w.string(m.from);
  wire::write_value(w, m.body);
  return w.take();
}
Result<AgentSend> decode_send(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::send, [](Reader& r) {
    AgentSend m;
    m.id = r.string();
    m.message_id = r.string();
    m.from = r.string();
    m.body = wire::read_value(r);
    return m;
  });
}

AgentMessageBytes encode(const SendAnswer& m) {
  Writer w;
  start(w, AgentMessageKind::send_answer);
  w.string(m.message_id);
  return w.take();
}
Result<SendAnswer> decode_send_answer(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::send_answer, [](Reader& r) { return SendAnswer{r.string()}; });
}

AgentMessageBytes encode(const AgentDeliver& m) {
  Writer w;
  start(w, AgentMessageKind::deliver);
  w.string(m.id);
  write_forwarded(w, m.message);
  w.string(m.token);
  w.string(m.previous);
  return w.take();
}
Result<AgentDeliver> decode_deliver(std::span<const std::uint8_t> bytes) {
  return decode_as(bytes, AgentMessageKind::deliver, [](Reader& r) {
    AgentDeliver m;
    m.id = r.string();
    m.message = read_forwarded(r);
    m.token = r.string();
    m.previous = r.string();
    return m;
  });
}

Value message_value(const AgentMessageBytes& bytes) {
  // SAFETY: the bytes are read as chars of the same size.
  return Value(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

Value message_args(const AgentMessageBytes& bytes) {
  // SAFETY: the bytes are read as chars of the same size.
  return string_args(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

Result<std::span<const std::uint8_t>> as_message_bytes(const Value& v, const char* what) {
  if (!v.is_string()) return errors::invalid_argument(std::string("bad agent message: ") + what + " is not a binary string");
  const std::string& text = v.as_string();
  // SAFETY: the string's bytes are viewed as unsigned bytes of the same size, for as long as
  // `v` (which holds the string) lives.
  return std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
}

Result<std::span<const std::uint8_t>> first_argument_bytes(const Value& args, const char* what) {
  // Key 1 of a table lives in its array part (Value::set and the decoder keep it there), so
  // the string is read where it lies; args.get(1) would copy it into a new Value.
  if (args.is_table()) {
    const auto& table = args.graph()->tables[std::get<detail::TableRef>(args.slot()).index];
    if (!table.array.empty()) {
      if (const auto* text = std::get_if<std::string>(&table.array.front())) {
        // SAFETY: viewed as unsigned bytes of the same size, for as long as `args` lives.
        return std::span(reinterpret_cast<const std::uint8_t*>(text->data()), text->size());
      }
    }
  }
  return errors::invalid_argument(std::string("bad agent message: ") + what + " is not a binary string");
}

}  // namespace sojourn
