// The agent services a node offers its peers (agent.transfer, agent.launch, the reports and
// the lookups), each decoding its one argument and handing it to AgentRuntime.
#include "agents/agent_runtime.hpp"

#include "agents/on_workers.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {

// The largest TRANSFER (encoded) the network thread takes itself (register_services): its
// decoding and checks stay within about a hundred microseconds.
constexpr std::size_t kInlineTransferBytes = 64u << 10;

// A peers-only agent service: its one argument decoded once as the message Decode reads
// (a malformed one is refused for that call alone), handled by `fn` with the struct, and
// answered with the encoded answer (nil for an answer without content).
template <class Msg, Result<Msg> (*Decode)(std::span<const std::uint8_t>), class Fn>
PeerService typed_service(std::weak_ptr<AgentRuntime> self, const char* what, Fn fn) {
  return [self, what, fn](const Value& args, const PeerIdentity& caller) -> Result<Value> {
    auto rt = self.lock();
    if (!rt) return errors::shutting_down();
    auto message = decode_message<Msg, Decode>(args.get(1), what);
    if (!message) return message.error();
    auto answer = fn(*rt, std::move(*message), caller);
    if (!answer) return answer.error();
    if constexpr (std::is_same_v<decltype(answer), Result<void>>) {
      return Value{};
    } else {
      return message_value(encode(*answer));
    }
  };
}

}  // namespace

void AgentRuntime::register_services(Node& node) {
  auto self = weak_from_this();
  ServiceOptions peers;
  peers.peers_only = true;
  using Caller = const PeerIdentity&;
  // Launch and transfer bring code: the policy matches the caller's identity.
  node.register_service("agent.launch", typed_service<AgentLaunchRequest, decode_launch>(
      self, "agent.launch's argument", [](AgentRuntime& rt, AgentLaunchRequest m, Caller c) { return rt.launch_here(m, c); }), peers);
  // Protocol 3's first step of a hop, which this protocol has no more: an older source hears why.
  node.register_service("agent.offer", [](const Value&, const PeerIdentity&) -> Result<Value> {
    return make_error(Errc::bad_version, "unsupported protocol version 3 (this node speaks agent protocol " +
                                             std::to_string(kAgentProtocolVersion) +
                                             ", where a hop is a TRANSFER with no OFFER before it)");
  }, peers);
  // agent.transfer, as typed_service with the TRANSFER's receipt (before it is decoded) in
  // the trace. A small TRANSFER of a weak agent whose code this node has, to a node without
  // a store, is taken by the reader, on the network thread: its decoding and checks cost
  // tens of microseconds, less than the two thread hand-offs (to a worker and back) they
  // would wait for, and the arrived agent's first step goes straight to a worker. A large
  // one (its decoding grows with its size), one carrying code or a heap image (hashed,
  // written to the code cache), or one whose COMMIT must first be written to the store, is
  // taken on a worker.
  {
    // Decodes the call's two arguments, the encoded TRANSFER and the agent's state.
    // Both are read where they lie in the call's arguments (a 1 MB state is not copied out
    // of them).
    auto decode = [self](const Value& args) -> Result<AgentTransfer> {
      const auto wall = std::chrono::system_clock::now();
      const auto mono = std::chrono::steady_clock::now();
      auto rt = self.lock();
      if (!rt) return errors::shutting_down();
      auto bytes = first_argument_bytes(args, "agent.transfer's argument");
      if (!bytes) return bytes.error();
      const std::size_t transfer_bytes = bytes->size();  // decode_transfer_call drops them from args
      auto message = decode_transfer_call(args);
      if (!message) return message.error();
      if (rt->counters_ != nullptr && rt->counters_->trace.has_file()) {
        const std::string size = std::to_string(transfer_bytes + message->state_bytes);
        const std::string from = message->record.hops.empty() ? std::string() : message->record.hops.back().node;
        rt->counters_->trace.add_at(wall, mono, "transfer_received", message->record.id, from, "transfer_bytes=" + size);
        rt->counters_->trace.add_at(wall, mono, "restore_start", message->record.id, from,
                                    "epoch " + std::to_string(message->record.epoch));
      }
      return message;
    };
    auto take = [self](AgentTransfer message, const PeerIdentity& caller) -> Result<Value> {
      auto rt = self.lock();
      if (!rt) return errors::shutting_down();
      auto answer = rt->on_transfer(std::move(message), caller);
      if (!answer) return answer.error();
      return message_value(encode(*answer));
    };
    ServiceEntry transfer;
    transfer.options = peers;
    transfer.fn = [decode, take](const Value& args, const PeerIdentity& caller) -> Result<Value> {
      auto message = decode(args);
      if (!message) return message.error();
      return take(std::move(*message), caller);
    };
    const bool durable = store_ != nullptr;
    transfer.async_fn = [self, decode, take, durable](Value args, PeerIdentity caller) -> asio::awaitable<Result<Value>> {
      auto rt = self.lock();
      if (!rt) co_return errors::shutting_down();
      auto bytes = first_argument_bytes(args, "agent.transfer's argument");
      if (durable || !bytes || bytes->size() > kInlineTransferBytes) {
        co_return co_await on_workers(rt->runtime_.workers(), [&]() -> Result<Value> {
          auto message = decode(args);
          if (!message) return message.error();
          return take(std::move(*message), caller);
        });
      }
      auto message = decode(args);
      if (!message) co_return message.error();
      const bool light = !message->bundle_bytes && !message->image && message->record.mobility == Mobility::weak;
      if (light) co_return take(std::move(*message), caller);
      co_return co_await on_workers(rt->runtime_.workers(), [&] { return take(std::move(*message), caller); });
    };
    services_.add("agent.transfer", std::move(transfer));
  }
  // Pieces of a heap image too large for one frame, ahead of their TRANSFER (migration.cpp).
  // agent.image_part, as typed_service but holding its argument while the part (a view of
  // it) is staged.
  node.register_service("agent.image_part", PeerService([self](const Value& args, const PeerIdentity&) -> Result<Value> {
    auto rt = self.lock();
    if (!rt) return errors::shutting_down();
    const Value bytes = args.get(1);
    auto part = decode_message<ImagePart, decode_image_part>(bytes, "agent.image_part's argument");
    if (!part) return part.error();
    if (auto staged = rt->on_image_part(std::move(*part)); !staged) return staged.error();
    return Value{};
  }), peers);
  // Reports to an agent's home: the reporter must hold the agent (tracking.cpp).
  // An arrival report, on a home without a store, is a lookup and an update under the lock
  // (no write, no wait): answered on the network thread, as it is read, instead of costing
  // the home two thread hand-offs (to a worker and back) per hop. With a store the update is
  // written before the answer: on a worker.
  ServiceOptions arrival = peers;
  arrival.inline_on_network_thread = store_ == nullptr;
  node.register_service("agent.arrived", typed_service<ArrivalReport, decode_arrival>(
      self, "agent.arrived's argument", [](AgentRuntime& rt, ArrivalReport m, Caller c) { return rt.on_arrived(m, c); }), arrival);
  node.register_service("agent.finished", typed_service<EndReport, decode_end>(
      self, "agent.finished's argument", [](AgentRuntime& rt, EndReport m, Caller c) { return rt.on_finished(m, c); }), peers);
  node.register_service("agent.send", typed_service<AgentSend, decode_send>(
      self, "agent.send's argument", [](AgentRuntime& rt, AgentSend m, Caller) { return rt.on_send(m); }), peers);
  node.register_service("agent.deliver", typed_service<AgentDeliver, decode_deliver>(
      self, "agent.deliver's argument", [](AgentRuntime& rt, AgentDeliver m, Caller) { return rt.on_deliver(m); }), peers);
  node.register_service("code.fetch", typed_service<FetchQuery, decode_fetch_query>(
      self, "code.fetch's argument", [](AgentRuntime& rt, FetchQuery m, Caller) { return rt.on_fetch(m); }), peers);
  // agent.status ID: Lua code may call it too, so it answers the status as a table.
  node.register_service("agent.status", PeerService([self](const Value& args, const PeerIdentity& caller) -> Result<Value> {
    auto rt = self.lock();
    if (!rt) return errors::shutting_down();
    Value id = args.get(1);
    auto status = rt->status_of(id.is_string() ? id.as_string() : std::string(), caller);
    if (!status) return status.error();
    return to_value(*status);
  }));
  // agent.wait: the status once the agent has ended, or after wait_ms (at most 20 s);
  // answered by the end itself, on the network thread, holding no worker.
  {
    ServiceEntry wait;
    wait.options = peers;
    wait.fn = [](const Value&, const PeerIdentity&) -> Result<Value> {
      return errors::invalid_argument("agent.wait is served to peers only");
    };
    wait.async_fn = [self](Value args, PeerIdentity caller) -> asio::awaitable<Result<Value>> {
      auto rt = self.lock();
      if (!rt) co_return errors::shutting_down();
      auto query = decode_message<WaitQuery, decode_wait_query>(args.get(1), "agent.wait's argument");
      if (!query) co_return query.error();
      auto status = co_await rt->wait_here(query->id, std::chrono::milliseconds(query->wait_ms), std::move(caller));
      if (!status) co_return status.error();
      co_return message_value(encode(*status));
    };
    services_.add("agent.wait", std::move(wait));
  }
  node.register_service("agent.list", PeerService([self](const Value&, const PeerIdentity& caller) -> Result<Value> {
    auto rt = self.lock();
    if (!rt) return errors::shutting_down();
    auto agents = rt->list(caller);
    if (!agents) return agents.error();
    return message_value(encode(*agents));
  }));
}

}  // namespace sojourn
