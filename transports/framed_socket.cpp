// Frame reading and the single-writer queue of a TCP or TLS connection.
#include "transports/framed_socket.hpp"


#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>

#include <boost/asio/ssl/stream.hpp>

#include "transports/tls_context.hpp"

#include "sojourn/core/log.hpp"

namespace sojourn::transport_detail {

namespace {

// One large buffer a network thread keeps from a frame it wrote, for the next large frame
// it reads: a 1 MB hop then finds mapped pages instead of fresh ones (glibc returns a
// freed buffer of that size to the kernel, and the next one faults its pages in again).
// Smaller buffers are reused well by malloc itself; larger ones are not kept idle.
constexpr std::size_t kSpareMinBytes = 256 * 1024;
constexpr std::size_t kSpareMaxBytes = 4 * 1024 * 1024;
thread_local std::vector<std::uint8_t> t_spare_buffer;

void offer_spare_buffer(std::vector<std::uint8_t>& bytes) {
  const std::size_t capacity = bytes.capacity();
  if (capacity < kSpareMinBytes || capacity > kSpareMaxBytes || capacity <= t_spare_buffer.capacity()) return;
  t_spare_buffer = std::move(bytes);
}

// The spare buffer if it holds at_least bytes, emptied; otherwise an empty vector.
std::vector<std::uint8_t> take_spare_buffer(std::size_t at_least) {
  std::vector<std::uint8_t> out;
  if (t_spare_buffer.capacity() >= at_least) {
    out.swap(t_spare_buffer);
    out.clear();
  }
  return out;
}

}  // namespace

bool is_protocol_error(Errc code) {
  switch (code) {
    case Errc::bad_magic:
    case Errc::bad_version:
    case Errc::bad_kind:
    case Errc::frame_too_large:
    case Errc::overloaded:
    case Errc::malformed_payload:
    case Errc::truncated: return true;
    default: return false;
  }
}

void log_coroutine_exit(const char* what, std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    log_error("transport", std::string(what) + " ended with an exception: " + ex.what());
  } catch (...) {
    log_error("transport", std::string(what) + " ended with an unknown exception");
  }
}

FramedSocket::FramedSocket(tcp::socket socket, std::uint32_t max_payload, std::chrono::milliseconds frame_timeout,
                           std::string peer_name)
    : executor_(socket.get_executor()),
      socket_(std::move(socket)),
      frame_timer_(executor_),
      frame_timeout_(frame_timeout),
      max_payload_(max_payload),
      peer_name_(std::move(peer_name)) {
  boost::system::error_code ignored;
  socket_.set_option(tcp::no_delay(true), ignored);
}

FramedSocket::FramedSocket(tcp::socket socket, std::shared_ptr<const TlsContext> tls, bool server_side,
                           std::uint32_t max_payload, std::chrono::milliseconds frame_timeout, std::string peer_name)
    : executor_(socket.get_executor()),
      socket_(executor_),
      tls_context_(std::move(tls)),
      server_side_(server_side),
      frame_timer_(executor_),
      frame_timeout_(frame_timeout),
      max_payload_(max_payload),
      peer_name_(std::move(peer_name)) {
  boost::system::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  tls_ = std::make_unique<TlsStream>(std::move(socket), tls_context_->context());
}

FramedSocket::~FramedSocket() = default;

tcp::socket& FramedSocket::lowest() { return tls_ ? tls_->next_layer() : socket_; }

std::optional<Error> FramedSocket::tls_read_error(const boost::system::error_code& ec) const {
  if (tls_ && is_certificate_alert(ec)) return refused_error(peer_name_, ec);
  return std::nullopt;
}

void FramedSocket::arm_frame_timer() {
  // A peer that starts a frame must finish it: otherwise it could hold the connection
  // (and its buffer) forever with a few bytes. Idle time between frames is not limited.
  if (!frame_deadline_) frame_deadline_ = std::chrono::steady_clock::now() + frame_timeout_;
  frame_timer_.expires_at(*frame_deadline_);
  std::uint64_t armed = ++frame_timer_generation_;
  frame_timer_.async_wait([self = shared_from_this(), armed](boost::system::error_code ec) {
    // A handler already queued when the read completed is stale: the generation moved on.
    if (ec || armed != self->frame_timer_generation_) return;
    self->frame_timed_out_ = true;
    boost::system::error_code ignored;
    self->lowest().cancel(ignored);
  });
}

void FramedSocket::disarm_frame_timer() {
  ++frame_timer_generation_;
  frame_timer_.cancel();
}

asio::awaitable<std::size_t> FramedSocket::read_more(boost::system::error_code& ec) {
  // fill(1) without a coroutine of its own, for a buffer with nothing in it (no frame timer).
  if (!read_buffer_) read_buffer_ = std::make_unique_for_overwrite<std::uint8_t[]>(kReadBufferBytes);
  if (read_begin_ == read_end_) read_begin_ = read_end_ = 0;
  if (batch_) flush(/*now=*/true);
  auto space = asio::buffer(read_buffer_.get() + read_end_, kReadBufferBytes - read_end_);
  if (tls_) return tls_->async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
  return socket_.async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<bool> FramedSocket::fill(std::size_t wanted, boost::system::error_code& ec, bool mid_frame) {
  if (!read_buffer_) read_buffer_ = std::make_unique_for_overwrite<std::uint8_t[]>(kReadBufferBytes);
  // Compact, then read whatever the socket has: under load one read brings many frames.
  if (read_begin_ > 0 && read_begin_ == read_end_) read_begin_ = read_end_ = 0;
  if (kReadBufferBytes - read_begin_ < wanted) {
    std::memmove(read_buffer_.get(), read_buffer_.get() + read_begin_, read_end_ - read_begin_);
    read_end_ -= read_begin_;
    read_begin_ = 0;
  }
  while (read_end_ - read_begin_ < wanted) {
    // The reader is about to wait: what was sent meanwhile (a server's replies, a client's
    // next requests) goes out first, together, and at once (plain TCP: the write ends here,
    // not in a posted completion that would make the next poll of the reactor a
    // non-blocking one more per request).
    if (batch_) flush(/*now=*/true);
    bool partial = mid_frame || read_end_ > read_begin_;
    if (partial) arm_frame_timer();
    auto space = asio::buffer(read_buffer_.get() + read_end_, kReadBufferBytes - read_end_);
    std::size_t n = 0;
    if (tls_) {
      n = co_await tls_->async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
    } else {
      n = co_await socket_.async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
    }
    if (partial) disarm_frame_timer();
    read_end_ += n;
    if (ec) co_return false;
  }
  co_return true;
}

Error FramedSocket::incomplete(std::size_t have, std::size_t of, const char* part) const {
  if (frame_timed_out_) {
    return make_error(Errc::truncated, "truncated frame: " + std::to_string(have) + " of " + std::to_string(of) + " " +
                                           part + " bytes after " + std::to_string(frame_timeout_.count()) + " ms");
  }
  return make_error(Errc::truncated, "truncated frame: connection closed after " + std::to_string(have) + " of " +
                                         std::to_string(of) + " " + part + " bytes");
}

Result<void> FramedSocket::take_buffered(std::vector<std::uint8_t>& payload, std::size_t length, BudgetCharge& charge) {
  const std::size_t n = std::min(length - payload.size(), read_end_ - read_begin_);
  const std::size_t size = payload.size() + n;
  if (size > frame_charged_) {
    // The charge grows in powers of two as the bytes come; the capacity, not the size, is
    // what is counted. The first kFreePayloadBytes of a frame are not charged: small
    // requests are served even when slow senders have taken the whole budget (a
    // connection holds one frame).
    const std::size_t capacity = std::min(length, std::bit_ceil(std::max(size, kFreePayloadBytes)));
    const auto charged = [](std::size_t c) { return c > kFreePayloadBytes ? c - kFreePayloadBytes : 0; };
    if (!charge.take(charged(capacity) - charged(frame_charged_))) {
      return make_error(Errc::overloaded, "node is overloaded: the frames being read would hold more than " +
                                              std::to_string(budget_->limit()) + " bytes");
    }
    frame_charged_ = capacity;
    if (capacity > kFreePayloadBytes) {
      // Past the free part the sender has shown it means the frame: the payload gets its
      // final size at once (no re-copy at each doubling), from the buffer a large write
      // of this thread left if there is one (its pages are still mapped). Reserved pages
      // are touched only as bytes arrive, so what is resident stays within the charge.
      if (payload.capacity() < length) {
        std::vector<std::uint8_t> larger = take_spare_buffer(length);
        larger.reserve(length);
        larger.insert(larger.end(), payload.begin(), payload.end());
        payload.swap(larger);
      }
    } else {
      payload.reserve(capacity);
    }
  }
  payload.insert(payload.end(), read_buffer_.get() + read_begin_, read_buffer_.get() + read_begin_ + n);
  read_begin_ += n;
  return {};
}

Error FramedSocket::ended_between_frames(const boost::system::error_code& ec) const {
  if (auto refused = tls_read_error(ec)) return *refused;
  return make_error(Errc::connection_closed, "connection closed: " + ec.message());
}

asio::awaitable<Result<Frame>> FramedSocket::read_frame() {
  boost::system::error_code ec;
  frame_deadline_.reset();
  // A header already buffered is not waited for: no coroutine of fill() is made for it.
  if (read_end_ - read_begin_ < kFrameHeaderSize && !co_await fill(kFrameHeaderSize, ec)) {
    std::size_t have = read_end_ - read_begin_;
    if (have == 0) co_return ended_between_frames(ec);
    if (auto refused = tls_read_error(ec)) co_return *refused;
    co_return incomplete(have, kFrameHeaderSize, "header");
  }
  std::span<const std::uint8_t, kFrameHeaderSize> head(read_buffer_.get() + read_begin_, kFrameHeaderSize);
  auto header = parse_header(head, max_payload_);
  if (!header) co_return header.error();
  read_begin_ += kFrameHeaderSize;
  Frame frame;
  frame.header = *header;
  if (!spare_payloads_.empty() && header->length <= kSparePayloadBytes) {
    frame.payload = std::move(spare_payloads_.back());
    spare_payloads_.pop_back();
  }
  // The payload grows only as its bytes arrive (a header alone costs nothing), and what a
  // server's connections hold of unfinished frames together stays within its budget.
  BudgetCharge charge(budget_.get());
  frame_charged_ = 0;
  const std::size_t length = header->length;
  while (frame.payload.size() < length) {
    if (read_end_ == read_begin_ && !co_await fill(1, ec, /*mid_frame=*/true)) {
      if (auto refused = tls_read_error(ec)) co_return *refused;
      co_return incomplete(frame.payload.size(), length, "payload");
    }
    if (auto taken = take_buffered(frame.payload, length, charge); !taken) co_return taken.error();
  }
  // Until the reader next waits (fill), the replies it queues are held to go out together.
  if (batch_) holding_ = true;
  co_return frame;
}

std::optional<Result<FramedSocket::BufferedFrame>> FramedSocket::next_buffered() {
  const std::size_t have = read_end_ - read_begin_;
  if (have < kFrameHeaderSize) return std::nullopt;
  std::span<const std::uint8_t, kFrameHeaderSize> head(read_buffer_.get() + read_begin_, kFrameHeaderSize);
  auto header = parse_header(head, max_payload_);
  if (!header) return Result<BufferedFrame>(header.error());
  // A frame that fits in the read buffer is within the free part: no budget is charged
  // for it (take_buffered would charge nothing either).
  static_assert(kReadBufferBytes <= kFreePayloadBytes);
  if (header->length > have - kFrameHeaderSize) return std::nullopt;
  // SAFETY: header and payload (checked just above) lie in the buffered bytes.
  BufferedFrame out{*header, std::span<const std::uint8_t>(read_buffer_.get() + read_begin_ + kFrameHeaderSize, header->length)};
  read_begin_ += kFrameHeaderSize + header->length;
  // As read_frame(): until the reader next waits, the replies it queues are held.
  if (batch_) holding_ = true;
  return Result<BufferedFrame>(out);
}

Frame FramedSocket::to_frame(const BufferedFrame& buffered) {
  Frame frame;
  frame.header = buffered.header;
  if (!spare_payloads_.empty() && buffered.payload.size() <= kSparePayloadBytes) {
    frame.payload = std::move(spare_payloads_.back());
    spare_payloads_.pop_back();
  }
  frame.payload.assign(buffered.payload.begin(), buffered.payload.end());
  return frame;
}

std::optional<Result<Frame>> FramedSocket::next_buffered_frame() {
  auto buffered = next_buffered();
  if (!buffered) return std::nullopt;
  if (!*buffered) return Result<Frame>(buffered->error());
  return Result<Frame>(to_frame(**buffered));
}

void FramedSocket::send(std::vector<std::uint8_t> bytes) {
  if (closing_ || closed_) return;
  if (shaper_) {
    auto at = shaper_->arrival(std::chrono::steady_clock::now(), bytes.size());
    delayed_.push_back(Delayed{at, std::move(bytes)});
    if (delayed_.size() == 1) {
      release_timer_->expires_at(at);
      release_timer_->async_wait([self = shared_from_this()](boost::system::error_code) { self->release_due(); });
    }
    return;
  }
  queue_.push_back(Outgoing{{}, false, std::move(bytes)});
  write_soon();
}

void FramedSocket::send_frame(FrameKind kind, std::uint64_t request_id, std::vector<std::uint8_t> payload) {
  if (closing_ || closed_) return;
  if (shaper_) {  // the emulated link holds whole frames
    send(encode_frame(kind, request_id, payload));
    return;
  }
  Outgoing out;
  out.header = encode_header(FrameHeader{kind, 0, static_cast<std::uint32_t>(payload.size()), request_id});
  out.has_header = true;
  out.bytes = std::move(payload);
  queue_.push_back(std::move(out));
  write_soon();
}

void FramedSocket::flush(bool now) {
  holding_ = false;
  if (!writing_ && !queue_.empty() && !closed_) write_queued(now);
}

void FramedSocket::set_shaper(std::shared_ptr<LinkShaper> shaper) {
  shaper_ = std::move(shaper);
  if (shaper_ && !release_timer_) release_timer_ = std::make_unique<asio::steady_timer>(executor_);
}

void FramedSocket::release_due() {
  if (closed_) {
    delayed_.clear();
    return;
  }
  auto now = std::chrono::steady_clock::now();
  while (!delayed_.empty() && delayed_.front().at <= now) {
    queue_.push_back(Outgoing{{}, false, std::move(delayed_.front().bytes)});
    delayed_.pop_front();
  }
  if (!queue_.empty() && !writing_) write_queued();
  if (!delayed_.empty()) {
    release_timer_->expires_at(delayed_.front().at);
    release_timer_->async_wait([self = shared_from_this()](boost::system::error_code) { self->release_due(); });
  } else if (closing_ && flushed()) {
    close();
  }
}

void FramedSocket::close_after_flush() {
  closing_ = true;
  flush();
  if (flushed()) close();
}

void FramedSocket::close() {
  if (closed_) return;
  closed_ = true;
  closing_ = true;
  if (release_timer_) release_timer_->cancel();
  // TLS: no close_notify. Frames carry their length, so a truncation is always seen.
  boost::system::error_code ignored;
  lowest().shutdown(tcp::socket::shutdown_both, ignored);
  lowest().close(ignored);
}

void FramedSocket::shutdown_receive() {
  boost::system::error_code ignored;
  lowest().shutdown(tcp::socket::shutdown_receive, ignored);
}

void FramedSocket::write_queued(bool now) {
  // Everything queued goes out in one gathered write: fewer system calls under load.
  writing_ = true;
  in_write_.swap(queue_);
  write_buffers_.clear();
  // Headers and small payloads are copied into one buffer the connection keeps: a window
  // of small frames is one segment of the write, not two per frame (Asio passes at most
  // 64 segments to one sendmsg). Large payloads are written from where they are.
  std::size_t packed = 0;
  for (const auto& out : in_write_) {
    if (out.has_header) packed += kFrameHeaderSize;
    if (out.bytes.size() <= kPackedPayloadBytes) packed += out.bytes.size();
  }
  write_packed_.clear();
  write_packed_.reserve(packed);  // no reallocation below: the buffers point into it
  std::size_t run = 0;            // where the packed bytes not yet in a buffer begin
  for (const auto& out : in_write_) {
    if (out.has_header) write_packed_.insert(write_packed_.end(), out.header.begin(), out.header.end());
    if (out.bytes.size() <= kPackedPayloadBytes) {
      write_packed_.insert(write_packed_.end(), out.bytes.begin(), out.bytes.end());
      continue;
    }
    if (write_packed_.size() > run) write_buffers_.emplace_back(write_packed_.data() + run, write_packed_.size() - run);
    run = write_packed_.size();
    write_buffers_.emplace_back(asio::buffer(out.bytes));
  }
  if (write_packed_.size() > run) write_buffers_.emplace_back(write_packed_.data() + run, write_packed_.size() - run);
  if ((write_directly_ || (now && !tls_)) && send_now()) {
    write_done({});
    return;
  }
  auto written = [self = shared_from_this()](boost::system::error_code ec, std::size_t) { self->write_done(ec); };
  if (tls_) {
    asio::async_write(*tls_, write_buffers_, std::move(written));
  } else {
    asio::async_write(socket_, write_buffers_, std::move(written));
  }
}

bool FramedSocket::send_now() {
  constexpr std::size_t kMaxSegments = 64;  // what Asio would pass to one sendmsg
  if (write_buffers_.empty() || write_buffers_.size() > kMaxSegments || closed_) return false;
  std::array<iovec, kMaxSegments> segments;
  for (std::size_t i = 0; i < write_buffers_.size(); ++i) {
    // SAFETY: sendmsg only reads the segments; they point into buffers the write owns.
    segments[i] = iovec{const_cast<void*>(write_buffers_[i].data()), write_buffers_[i].size()};
  }
  msghdr message{};
  message.msg_iov = segments.data();
  message.msg_iovlen = write_buffers_.size();
  ssize_t sent;
  do {
    sent = ::sendmsg(socket_.native_handle(), &message, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  // Nothing sent (the socket is full, or an error): async_write waits, or reports the error.
  if (sent <= 0) return false;
  auto left = static_cast<std::size_t>(sent);
  std::size_t done = 0;
  while (done < write_buffers_.size() && left >= write_buffers_[done].size()) left -= write_buffers_[done++].size();
  if (done == write_buffers_.size()) return true;
  write_buffers_.erase(write_buffers_.begin(), write_buffers_.begin() + static_cast<std::ptrdiff_t>(done));
  write_buffers_.front() += left;  // the rest of a segment that went in part
  return false;
}

void FramedSocket::write_done(boost::system::error_code ec) {
  frames_sent_ += in_write_.size();
  for (auto& out : in_write_) {
    const std::size_t capacity = out.bytes.capacity();
    if (capacity > 0 && capacity <= kSparePayloadBytes && spare_payloads_.size() < kSparePayloads) {
      out.bytes.clear();
      spare_payloads_.push_back(std::move(out.bytes));
    } else {
      // A small one goes to the thread's next encode (a server's next reply), a large one
      // to its next large read.
      give_small_buffer(out.bytes);
      offer_spare_buffer(out.bytes);
    }
  }
  in_write_.clear();
  // A burst's packed buffer is not kept by a connection that may now stay idle.
  if (write_packed_.capacity() > kKeptPackedBytes) write_packed_ = {};
  writing_ = false;
  if (ec) {
    if (!closed_) log_debug("transport", "write to " + peer_name_ + " failed: " + ec.message());
    close();
  } else if (!queue_.empty() && !closed_) {
    write_queued();
  } else if (closing_ && delayed_.empty()) {
    close();
  }
}

}  // namespace sojourn::transport_detail
