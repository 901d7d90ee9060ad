// Frame I/O with a deadline on the host's end of a guest channel.
#include "sandbox/process/host_channel.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

namespace sojourn::sandbox {

namespace {
constexpr int kAbortPollMs = 10;  // how often a wait looks at the abort flag
constexpr std::size_t kReadChunk = 64 * 1024;
// What one read of a frame's header takes: most frames (a host call, a small result) arrive
// whole in it. On the stack: a vector sized for it would be zero-filled on every read.
constexpr std::size_t kHeaderReadChunk = 16 * 1024;
constexpr std::size_t kMaxReadChunk = 1024 * 1024;
}  // namespace

HostChannel::HostChannel(UniqueFd fd, Clock::time_point deadline, const std::atomic<bool>* abort, bool already_nonblocking)
    : fd_(std::move(fd)), deadline_(deadline), abort_(abort) {
  if (!already_nonblocking) ::fcntl(fd_.get(), F_SETFL, ::fcntl(fd_.get(), F_GETFL) | O_NONBLOCK);
}

ChannelStatus HostChannel::wait(short events) {
  for (;;) {
    if (abort_ != nullptr && abort_->load(std::memory_order_relaxed)) return ChannelStatus::aborted;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
    if (left <= 0) return ChannelStatus::deadline;
    int timeout = static_cast<int>(std::min<long long>(left, 1'000'000));
    if (abort_ != nullptr) timeout = std::min(timeout, kAbortPollMs);
    pollfd p{fd_.get(), events, 0};
    const int n = ::poll(&p, 1, timeout);
    if (n < 0 && errno != EINTR) return ChannelStatus::closed;
    if (n > 0) return ChannelStatus::ok;  // readable, writable, or hung up: the call says which
  }
}

UniqueFd HostChannel::release() {
  if (!buffer_.empty()) return UniqueFd();
  return std::move(fd_);
}

ChannelStatus HostChannel::write(std::span<const std::uint8_t> frame) {
  while (!frame.empty()) {
    const ssize_t n = ::send(fd_.get(), frame.data(), frame.size(), MSG_NOSIGNAL);
    if (n > 0) {
      frame = frame.subspan(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) return ChannelStatus::closed;
    if (ChannelStatus s = wait(POLLOUT); s != ChannelStatus::ok) return s;
  }
  return ChannelStatus::ok;
}

ChannelStatus HostChannel::receive(std::vector<std::uint8_t>& out, std::size_t at, std::size_t want) {
  out.resize(at + want);
  for (;;) {
    const ssize_t n = ::recv(fd_.get(), out.data() + at, want, 0);
    if (n > 0) {
      out.resize(at + static_cast<std::size_t>(n));
      return ChannelStatus::ok;
    }
    if (n < 0 && errno == EINTR) continue;
    out.resize(at);
    if (n == 0 || errno != EAGAIN) return ChannelStatus::closed;
    if (ChannelStatus s = wait(POLLIN); s != ChannelStatus::ok) return s;
    out.resize(at + want);
  }
}

ChannelStatus HostChannel::fill_buffer() {
  std::uint8_t chunk[kHeaderReadChunk];
  // A frame's header is read after the host wrote and the guest has yet to answer (a request,
  // a host call's reply): it has nearly never arrived yet, so the wait comes first (poll, recv)
  // rather than after a recv that finds nothing (recv, poll, recv).
  if (ChannelStatus s = wait(POLLIN); s != ChannelStatus::ok) return s;
  for (;;) {
    const ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
    if (n > 0) {
      buffer_.insert(buffer_.end(), chunk, chunk + n);
      return ChannelStatus::ok;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || errno != EAGAIN) return ChannelStatus::closed;
    if (ChannelStatus s = wait(POLLIN); s != ChannelStatus::ok) return s;
  }
}

ChannelStatus HostChannel::read(channel::Kind& kind, std::vector<std::uint8_t>& payload, const ReadLimits& limits) {
  while (buffer_.size() < channel::kHeaderBytes) {
    if (ChannelStatus s = fill_buffer(); s != ChannelStatus::ok) return s;
  }
  const channel::FrameHeader header =
      channel::parse_header(std::span<const std::uint8_t, channel::kHeaderBytes>(buffer_.data(), channel::kHeaderBytes));
  // Refused before a byte of the payload is read: what the guest declares costs the host nothing.
  if (header.length > limits.max_payload) {
    refused_length_ = header.length;
    return ChannelStatus::too_large;
  }
  if (header.kind == limits.result_kind && header.length > limits.max_result) {
    refused_length_ = header.length;
    return ChannelStatus::result_too_large;
  }
  kind = header.kind;
  const std::size_t length = header.length;
  const auto first = buffer_.begin() + channel::kHeaderBytes;
  const std::size_t buffered = std::min(length, buffer_.size() - channel::kHeaderBytes);
  payload.assign(first, first + static_cast<std::ptrdiff_t>(buffered));
  buffer_.erase(buffer_.begin(), first + static_cast<std::ptrdiff_t>(buffered));
  // The rest goes straight into place, in bounded chunks: resize zero-fills, so the payload
  // grows with what arrives, never to what the header claims.
  while (payload.size() < length) {
    const std::size_t want = std::clamp<std::size_t>(length - payload.size(), 1, std::max(kReadChunk, std::min(payload.size(), kMaxReadChunk)));
    if (ChannelStatus s = receive(payload, payload.size(), want); s != ChannelStatus::ok) return s;
  }
  return ChannelStatus::ok;
}

}  // namespace sojourn::sandbox
