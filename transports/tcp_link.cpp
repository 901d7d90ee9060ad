// The client side of a TCP or TLS connection: connects lazily (TLS: and authenticates
// the server), multiplexes requests by id, and wakes each waiting request when its reply,
// its deadline (one timer per link) or a failure arrives.
#include <algorithm>
#include <cstddef>
#include <deque>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include <boost/asio/connect.hpp>

#include "sojourn/core/log.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/transports/link.hpp"
#include "transports/close_on_exec.hpp"
#include "transports/framed_socket.hpp"

namespace sojourn {

using namespace transport_detail;

namespace {

// The completion handler of a request waiting for its reply, kept by its slot. The reader
// resumes it in place: the request's coroutine runs on (sends its next request, say) before
// the reader reads again, with no handler queued in between (which would also make the next
// poll of the reactor a non-blocking one more per request). Deadlines and failures post it.
// The handler lives in the slot's own storage (slots are kept from request to request), so
// waiting costs no allocation; one too large for it goes to the heap.
class ReplyWaiter {
 public:
  ReplyWaiter() = default;
  // A moved waiter's handler goes to the heap: the slot may be reused meanwhile.
  ReplyWaiter(ReplyWaiter&& other) noexcept : held_(other.held_ ? other.take()->to_heap() : nullptr) {}
  ReplyWaiter& operator=(ReplyWaiter&&) = delete;
  ~ReplyWaiter() { drop(); }

  template <class Handler>
  void arm(Handler handler) {
    drop();
    if constexpr (sizeof(Held<Handler>) <= kInlineBytes && alignof(Held<Handler>) <= alignof(std::max_align_t)) {
      held_ = ::new (static_cast<void*>(storage_)) Held<Handler>(std::move(handler), false);
    } else {
      held_ = new Held<Handler>(std::move(handler), true);
    }
  }
  bool armed() const { return held_ != nullptr; }
  // Resumes the request here; it runs until it next waits. The handler leaves the slot
  // first: the request may free the slot, and the next request take and arm it, before
  // this returns.
  void resume_now() {
    if (held_) take()->resume();
  }
  void resume_later(const asio::any_io_executor& executor) {
    if (held_) take()->post(executor);
  }
  // Destroys the handler without resuming it (its coroutine is destroyed through its
  // executor, as Asio does with any abandoned handler).
  void drop() {
    if (held_) take()->destroy();
  }

 private:
  static constexpr std::size_t kInlineBytes = 128;
  // Each consumes the object: it is destroyed (and freed, if on the heap) on return.
  struct Base {
    virtual void resume() = 0;
    virtual void post(const asio::any_io_executor& executor) = 0;
    virtual Base* to_heap() = 0;
    virtual void destroy() = 0;

   protected:
    ~Base() = default;
  };
  template <class Handler>
  struct Held final : Base {
    Held(Handler h, bool heap) : handler(std::move(h)), on_heap(heap) {}
    Handler release() {
      Handler h(std::move(handler));
      destroy();
      return h;
    }
    void resume() override {
      Handler h = release();
      std::move(h)();
    }
    void post(const asio::any_io_executor& executor) override {
      asio::post(executor, [h = release()]() mutable { std::move(h)(); });
    }
    Base* to_heap() override { return on_heap ? this : new Held(release(), true); }
    void destroy() override {
      if (on_heap) delete this;
      else this->~Held();
    }
    Handler handler;
    bool on_heap;
  };
  Base* take() { return std::exchange(held_, nullptr); }

  alignas(std::max_align_t) unsigned char storage_[kInlineBytes];
  Base* held_ = nullptr;
};

class TcpLink final : public Link, public std::enable_shared_from_this<TcpLink> {
 public:
  TcpLink(asio::any_io_executor ex, Address peer, TransportOptions options)
      : executor_(std::move(ex)),
        peer_(std::move(peer)),
        options_(options),
        connected_signal_(executor_),
        deadline_timer_(executor_) {
    connected_signal_.expires_at(asio::steady_timer::time_point::max());
  }

  asio::awaitable<Result<Frame>> request(FrameKind kind, std::vector<std::uint8_t> payload,
                                         std::chrono::milliseconds timeout) override {
    auto self = shared_from_this();
    auto deadline = std::chrono::steady_clock::now() + timeout;
    if (state_ == State::idle) {
      state_ = State::connecting;
      asio::co_spawn(executor_, connect(), [](std::exception_ptr e) { log_coroutine_exit("connect", e); });
    }
    while (state_ == State::connecting) {
      boost::system::error_code ec;
      co_await connected_signal_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (state_ == State::failed) co_return failure_;
    if (payload.size() > options_.max_payload) {
      co_return errors::frame_too_large(payload.size(), options_.max_payload);
    }

    // A slot of the link's table, kept for the next request once this one is done: its
    // wake-up timer is made once per slot, not once per request.
    std::uint32_t slot = 0;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else if (slots_.size() < kMaxSlots) {
      slot = static_cast<std::uint32_t>(slots_.size());
      slots_.push_back(std::make_unique<Pending>());
    } else {
      co_return make_error(Errc::overloaded, "too many requests in flight to " + peer_.to_string());
    }
    Pending& pending = *slots_[slot];
    // The id names the slot (its low bits): a reply finds its request without a map.
    const std::uint64_t id = (next_sequence_++ << kSlotBits) | slot;
    pending.id = id;
    pending.timeout = timeout;
    // Frees the slot however this coroutine ends (even destroyed while it waits).
    struct Release {
      TcpLink& link;
      std::uint32_t slot;
      ~Release() { link.release(slot); }
    } release{*this, slot};
    add_deadline(deadline, id);
    arm_deadline(deadline);
    socket_->send_frame(kind, id, std::move(payload));
    // Woken by its reply, its deadline (the link's one timer) or the link's failure.
    if (!pending.reply && !pending.error) {
      co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
          [&pending](auto handler) { pending.waiter.arm(std::move(handler)); }, asio::use_awaitable);
    }
    // Taken out of the slot here: the slot is freed (Release) before the value returns.
    Result<Frame> out = pending.reply ? Result<Frame>(std::move(*pending.reply)) : Result<Frame>(*pending.error);
    co_return out;
  }

  bool usable() const override { return state_ != State::failed; }
  void close() override { fail(errors::connection_closed(peer_.to_string(), "closed locally")); }
  const Address& peer() const override { return peer_; }
  std::string proven_id() const override { return proven_id_; }
  std::uint64_t frames_sent() const override { return socket_ ? socket_->frames_sent() : 0; }

 private:
  enum class State { idle, connecting, open, failed };
  static constexpr unsigned kSlotBits = 24;  // a request id's low bits: its slot
  static constexpr std::size_t kMaxSlots = std::size_t{1} << kSlotBits;
  struct Pending {
    ReplyWaiter waiter;
    std::optional<Frame> reply;
    std::optional<Error> error;
    std::chrono::milliseconds timeout{0};
    std::uint64_t id = 0;  // of the request holding the slot; 0: free
  };
  struct Deadline {
    std::chrono::steady_clock::time_point at;
    std::uint64_t id;
  };

  void wake_later(Pending& p) { p.waiter.resume_later(executor_); }

  // The reader's frame is destroyed with requests still waiting (the io_context went away
  // without the link being closed): their handlers hold their coroutines, which hold the
  // link, so they are dropped here, or the link and they would keep each other alive.
  void drop_waiters() {
    std::vector<ReplyWaiter> dropped;
    for (auto& p : slots_) {
      if (p->waiter.armed()) dropped.push_back(std::move(p->waiter));
    }
  }

  // The request with this id, while it holds its slot (answered or not).
  Pending* find(std::uint64_t id) {
    const std::size_t slot = id & (kMaxSlots - 1);
    if (slot >= slots_.size() || slots_[slot]->id != id || id == 0) return nullptr;
    return slots_[slot].get();
  }

  void release(std::uint32_t slot) {
    Pending& p = *slots_[slot];
    p.id = 0;
    p.reply.reset();
    p.error.reset();
    free_slots_.push_back(slot);
    // Deadlines of requests that are done go from the front; a request that waits long
    // keeps those behind it until they are more than twice the requests in flight.
    while (!deadlines_.empty() && !find(deadlines_.front().id)) deadlines_.pop_front();
    if (deadlines_.size() > 2 * (slots_.size() - free_slots_.size()) + 64) {
      std::erase_if(deadlines_, [this](const Deadline& d) { return !find(d.id); });
    }
  }

  // Deadlines are kept earliest first; with one timeout for every request (the usual
  // case) each goes at the back.
  void add_deadline(std::chrono::steady_clock::time_point at, std::uint64_t id) {
    if (deadlines_.empty() || deadlines_.back().at <= at) {
      deadlines_.push_back(Deadline{at, id});
      return;
    }
    auto later = std::upper_bound(deadlines_.begin(), deadlines_.end(), at,
                                  [](std::chrono::steady_clock::time_point t, const Deadline& d) { return t < d.at; });
    deadlines_.insert(later, Deadline{at, id});
  }

  // One timer per link for every request's deadline, armed at the earliest. It is not
  // disarmed when that request is answered: it fires then for nothing and re-arms at the
  // next, so a stream of requests costs no timer operation each.
  void arm_deadline(std::chrono::steady_clock::time_point at) {
    if (deadline_armed_ && deadline_timer_.expiry() <= at) return;
    deadline_armed_ = true;
    deadline_timer_.expires_at(at);  // cancels the wait for a later time
    deadline_timer_.async_wait([weak = weak_from_this()](boost::system::error_code ec) {
      if (ec == asio::error::operation_aborted) return;  // re-armed or closed: that one decides
      if (auto self = weak.lock()) self->deadlines_due();
    });
  }

  void deadlines_due() {
    deadline_armed_ = false;
    const auto now = std::chrono::steady_clock::now();
    while (!deadlines_.empty() && deadlines_.front().at <= now) {
      Pending* p = find(deadlines_.front().id);
      deadlines_.pop_front();
      if (!p || p->reply || p->error) continue;
      p->error = make_error(Errc::timeout, "request to " + peer_.to_string() + " timed out after " +
                                               std::to_string(p->timeout.count()) + " ms");
      wake_later(*p);
    }
    if (!deadlines_.empty() && state_ != State::failed) arm_deadline(deadlines_.front().at);
  }

  asio::awaitable<void> connect() {
    auto self = shared_from_this();
    tcp::resolver resolver(executor_);
    asio::steady_timer guard(executor_);
    tcp::socket socket(executor_);
    bool timed_out = false;
    const LinkRule* rule = options_.links ? options_.links->match(peer_.host, peer_.port) : nullptr;
    if (rule && rule->spec.setup.count() > 0) {
      // The emulated link's connection set-up (a TCP handshake's round trip, say) comes first.
      asio::steady_timer setup(executor_);
      setup.expires_after(rule->spec.setup);
      boost::system::error_code waited;
      co_await setup.async_wait(asio::redirect_error(asio::use_awaitable, waited));
    }
    guard.expires_after(options_.connect_timeout);
    guard.async_wait([&](boost::system::error_code ec) {
      if (ec) return;
      timed_out = true;
      resolver.cancel();
      boost::system::error_code ignored;
      socket.close(ignored);
    });
    boost::system::error_code ec;
    auto endpoints = co_await resolver.async_resolve(peer_.host, std::to_string(peer_.port),
                                                     asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) co_await asio::async_connect(socket, endpoints, asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) transports::set_close_on_exec(socket.native_handle());
    guard.cancel();
    if (ec || timed_out) {
      std::string why = timed_out ? "timed out after " + std::to_string(options_.connect_timeout.count()) + " ms" : ec.message();
      fail(errors::connect_failed(peer_.to_string(), why));
      co_return;
    }
    if (options_.tls) {
      socket_ = std::make_shared<FramedSocket>(std::move(socket), options_.tls, false, options_.max_payload,
                                               options_.frame_timeout, peer_.to_string());
      auto server = co_await socket_->handshake(options_.connect_timeout);
      if (!server) {
        fail(server.error());
        co_return;
      }
      log_debug("client", "TLS to " + server->to_string());
      proven_id_ = server->fingerprint;
    } else {
      socket_ = std::make_shared<FramedSocket>(std::move(socket), options_.max_payload, options_.frame_timeout, peer_.to_string());
      socket_->write_directly(true);
    }
    // The callers woken by one read of replies resume in place before the reader reads
    // again: what they send meanwhile is held and leaves in one write just before the
    // reader waits (one write for a window of pipelined requests).
    socket_->batch_while_reading(true);
    if (rule) {
      socket_->set_shaper(std::make_shared<LinkShaper>(rule->spec, link_seed(options_.links->seed, peer_.to_string()), options_.links->sent_bytes));
    }
    if (state_ == State::failed) {  // closed while connecting
      socket_->close();
      co_return;
    }
    state_ = State::open;
    connected_signal_.cancel();
    struct DropWaiters {
      TcpLink& link;
      ~DropWaiters() { link.drop_waiters(); }
    } drop_waiters_on_exit{*this};
    co_await reader();
  }

  asio::awaitable<void> reader() {
    while (state_ == State::open) {
      // Between replies the reader waits for bytes itself; a reply that then lies whole in
      // the buffer (a sequential caller's, or one of a read of many) is taken without a
      // coroutine of read_frame(), which reads only what came in part.
      std::optional<Result<Frame>> next;
      if (socket_->buffered_bytes() == 0) {
        boost::system::error_code ec;
        const std::size_t n = co_await socket_->read_more(ec);
        if (!socket_->took(n, ec)) next.emplace(socket_->ended_between_frames(ec));
      }
      if (!next) next = socket_->next_buffered_frame();
      if (!next) next.emplace(co_await socket_->read_frame());
      Result<Frame>& frame = *next;
      if (!frame) {
        std::string why = frame.error().message;
        if (frame.error().code == Errc::refused_by_peer) {
          fail(frame.error());  // TLS 1.3: the server's verdict on our certificate comes now
          break;
        }
        if (is_protocol_error(frame.error().code)) log_warn("client", peer_.to_string() + " sent a bad frame: " + why);
        fail(errors::connection_closed(peer_.to_string(), why));
        break;
      }
      if (frame->header.kind == FrameKind::protocol_error) {
        auto pe = decode_protocol_error(frame->payload);
        std::string why = pe ? pe->message : pe.error().message;
        fail(errors::remote_protocol_error(peer_.to_string(), why));
        break;
      }
      if (frame->header.kind != FrameKind::reply && frame->header.kind != FrameKind::pong) {
        fail(errors::connection_closed(peer_.to_string(),
                                       "server sent a " + std::string(frame_kind_name(frame->header.kind)) + " frame"));
        break;
      }
      Pending* p = find(frame->header.request_id);
      if (!p) continue;                    // its request timed out already
      if (p->reply || p->error) continue;  // answered already (timed out, say)
      p->reply = std::move(*frame);
      p->waiter.resume_now();
    }
  }

  void fail(const Error& e) {
    if (state_ == State::failed) return;
    state_ = State::failed;
    failure_ = e;
    for (auto& p : slots_) {
      if (p->id == 0 || p->reply || p->error) continue;
      p->error = e;
      wake_later(*p);
    }
    connected_signal_.cancel();
    deadline_timer_.cancel();
    deadline_armed_ = false;
    if (socket_) socket_->close();
  }

  asio::any_io_executor executor_;
  Address peer_;
  TransportOptions options_;
  asio::steady_timer connected_signal_;
  asio::steady_timer deadline_timer_;
  bool deadline_armed_ = false;
  std::deque<Deadline> deadlines_;  // request deadlines, earliest first (some of requests done)
  std::shared_ptr<FramedSocket> socket_;
  std::string proven_id_;  // the server's key fingerprint, once its handshake proved it
  std::vector<std::unique_ptr<Pending>> slots_;  // requests in flight, by the low bits of their id
  std::vector<std::uint32_t> free_slots_;
  std::uint64_t next_sequence_ = 1;  // a request id's high bits: never 0, never reused
  State state_ = State::idle;
  Error failure_;
};

}  // namespace

std::shared_ptr<Link> make_tcp_link(asio::any_io_executor executor, const Address& peer, const TransportOptions& options) {
  return std::make_shared<TcpLink>(std::move(executor), peer, options);
}

}  // namespace sojourn
