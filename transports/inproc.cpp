// The in-process transport: a link calls the named node's handler directly on that
// node's executor. Payloads still go through the codec and the size limit, so tests
// over it exercise everything but the socket.
#include <mutex>
#include <unordered_map>

#include "sojourn/transports/link.hpp"
#include "transports/asio_full.hpp"

namespace sojourn {

namespace {

struct InprocEntry {
  asio::any_io_executor executor;
  std::weak_ptr<RequestHandler> handler;
};

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::unordered_map<std::string, InprocEntry>& registry() {
  static std::unordered_map<std::string, InprocEntry> r;
  return r;
}

// As a TCP server serves a request: handle_now first, handle() for what it declines.
asio::awaitable<Result<std::vector<std::uint8_t>>> serve(std::shared_ptr<RequestHandler> handler, FrameKind kind,
                                                         std::vector<std::uint8_t> payload, PeerIdentity peer) {
  if (auto now = handler->handle_now(kind, payload, peer)) co_return std::move(*now);
  co_return co_await handler->handle(kind, std::move(payload), std::move(peer));
}

class InprocLink final : public Link, public std::enable_shared_from_this<InprocLink> {
 public:
  InprocLink(asio::any_io_executor ex, Address peer, TransportOptions options)
      : executor_(std::move(ex)), peer_(std::move(peer)), options_(options) {}

  asio::awaitable<Result<Frame>> request(FrameKind kind, std::vector<std::uint8_t> payload,
                                         std::chrono::milliseconds) override {
    auto self = shared_from_this();
    if (closed_) co_return errors::connection_closed(peer_.to_string(), "closed locally");
    InprocEntry entry;
    {
      std::lock_guard lock(registry_mutex());
      auto it = registry().find(peer_.name);
      if (it != registry().end()) entry = it->second;
    }
    auto handler = entry.handler.lock();
    if (!handler) co_return errors::connect_failed(peer_.to_string(), "no such in-process node");
    if (payload.size() > options_.max_payload) {
      co_return errors::frame_too_large(payload.size(), options_.max_payload);
    }
    ++frames_sent_;
    // Run the handler on the serving node's executor, then come back to ours.
    PeerIdentity peer;
    peer.address = "inproc";
    auto reply = co_await asio::co_spawn(entry.executor, serve(std::move(handler), kind, std::move(payload), std::move(peer)),
                                         asio::use_awaitable);
    co_await asio::post(executor_, asio::use_awaitable);
    if (!reply) co_return errors::remote_protocol_error(peer_.to_string(), reply.error().message);
    Frame f;
    f.header = FrameHeader{FrameKind::reply, 0, static_cast<std::uint32_t>(reply->size()), 0};
    f.payload = std::move(*reply);
    co_return f;
  }

  bool usable() const override { return !closed_; }
  void close() override { closed_ = true; }
  const Address& peer() const override { return peer_; }
  std::uint64_t frames_sent() const override { return frames_sent_; }

 private:
  asio::any_io_executor executor_;
  Address peer_;
  TransportOptions options_;
  bool closed_ = false;
  std::uint64_t frames_sent_ = 0;
};

}  // namespace

std::shared_ptr<Link> make_tcp_link(asio::any_io_executor executor, const Address& peer, const TransportOptions& options);

std::shared_ptr<Link> make_link(asio::any_io_executor executor, const Address& peer, const TransportOptions& options) {
  if (peer.kind == Address::Kind::inproc) return std::make_shared<InprocLink>(std::move(executor), peer, options);
  return make_tcp_link(std::move(executor), peer, options);
}

Result<void> register_inproc(const std::string& name, asio::any_io_executor executor, std::shared_ptr<RequestHandler> handler) {
  std::lock_guard lock(registry_mutex());
  auto [it, inserted] = registry().try_emplace(name, InprocEntry{std::move(executor), handler});
  if (!inserted) {
    if (!it->second.handler.expired()) return errors::bad_address("inproc://" + name, "name already in use");
    it->second = InprocEntry{std::move(executor), handler};
  }
  return {};
}

void unregister_inproc(const std::string& name) {
  std::lock_guard lock(registry_mutex());
  registry().erase(name);
}

}  // namespace sojourn
