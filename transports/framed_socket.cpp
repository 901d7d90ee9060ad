// Frame reading and the single-writer queue of a TCP or TLS connection.
#include "framed_socket.hpp"

#include <cstring>

#include <boost/asio/ssl/stream.hpp>

#include "tls_context.hpp"

#include "sojourn/core/log.hpp"

namespace sojourn::transport_detail {

bool is_protocol_error(Errc code) {
  switch (code) {
    case Errc::bad_magic:
    case Errc::bad_version:
    case Errc::bad_kind:
    case Errc::frame_too_large:
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
      read_buffer_(kReadBufferBytes),
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
      read_buffer_(kReadBufferBytes),
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

asio::awaitable<bool> FramedSocket::fill(std::size_t wanted, boost::system::error_code& ec) {
  // Compact, then read whatever the socket has: under load one read brings many frames.
  if (read_begin_ > 0 && read_begin_ == read_end_) read_begin_ = read_end_ = 0;
  if (read_buffer_.size() - read_begin_ < wanted) {
    std::memmove(read_buffer_.data(), read_buffer_.data() + read_begin_, read_end_ - read_begin_);
    read_end_ -= read_begin_;
    read_begin_ = 0;
  }
  while (read_end_ - read_begin_ < wanted) {
    bool partial = read_end_ > read_begin_;
    if (partial) arm_frame_timer();
    auto space = asio::buffer(read_buffer_.data() + read_end_, read_buffer_.size() - read_end_);
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

asio::awaitable<Result<Frame>> FramedSocket::read_frame() {
  boost::system::error_code ec;
  frame_deadline_.reset();
  if (!co_await fill(kFrameHeaderSize, ec)) {
    std::size_t have = read_end_ - read_begin_;
    if (auto refused = tls_read_error(ec)) co_return *refused;
    if (have == 0) co_return make_error(Errc::connection_closed, "connection closed: " + ec.message());
    co_return incomplete(have, kFrameHeaderSize, "header");
  }
  std::span<const std::uint8_t, kFrameHeaderSize> head(read_buffer_.data() + read_begin_, kFrameHeaderSize);
  auto header = parse_header(head, max_payload_);
  if (!header) co_return header.error();
  read_begin_ += kFrameHeaderSize;
  Frame frame;
  frame.header = *header;
  frame.payload.resize(header->length);  // bounded by max_payload_ above
  std::size_t buffered = std::min<std::size_t>(header->length, read_end_ - read_begin_);
  if (buffered > 0) std::memcpy(frame.payload.data(), read_buffer_.data() + read_begin_, buffered);
  read_begin_ += buffered;
  if (buffered < header->length) {
    // The rest of a large payload goes straight into place.
    arm_frame_timer();
    auto rest = asio::buffer(frame.payload.data() + buffered, header->length - buffered);
    std::size_t n = 0;
    if (tls_) {
      n = co_await asio::async_read(*tls_, rest, asio::redirect_error(asio::use_awaitable, ec));
    } else {
      n = co_await asio::async_read(socket_, rest, asio::redirect_error(asio::use_awaitable, ec));
    }
    disarm_frame_timer();
    if (ec) co_return incomplete(buffered + n, header->length, "payload");
  }
  co_return frame;
}

void FramedSocket::send(std::vector<std::uint8_t> bytes) {
  if (closing_ || closed_) return;
  queue_.push_back(std::move(bytes));
  if (!writing_) write_queued();
}

void FramedSocket::close_after_flush() {
  closing_ = true;
  if (!writing_) close();
}

void FramedSocket::close() {
  if (closed_) return;
  closed_ = true;
  closing_ = true;
  // TLS: no close_notify. Frames carry their length, so a truncation is always seen.
  boost::system::error_code ignored;
  lowest().shutdown(tcp::socket::shutdown_both, ignored);
  lowest().close(ignored);
}

void FramedSocket::shutdown_receive() {
  boost::system::error_code ignored;
  lowest().shutdown(tcp::socket::shutdown_receive, ignored);
}

void FramedSocket::write_queued() {
  // Everything queued goes out in one gathered write: fewer system calls under load.
  writing_ = true;
  in_write_.swap(queue_);
  write_buffers_.clear();
  for (const auto& b : in_write_) write_buffers_.emplace_back(asio::buffer(b));
  auto written = [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
    self->frames_sent_ += self->in_write_.size();
    self->in_write_.clear();
    self->writing_ = false;
    if (ec) {
      if (!self->closed_) log_debug("transport", "write to " + self->peer_name_ + " failed: " + ec.message());
      self->close();
    } else if (!self->queue_.empty() && !self->closed_) {
      self->write_queued();
    } else if (self->closing_) {
      self->close();
    }
  };
  if (tls_) {
    asio::async_write(*tls_, write_buffers_, std::move(written));
  } else {
    asio::async_write(socket_, write_buffers_, std::move(written));
  }
}

}  // namespace sojourn::transport_detail
