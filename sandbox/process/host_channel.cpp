// Frame I/O with a deadline on the host's end of a guest channel.
#include "sandbox/process/host_channel.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

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
// Room a payload gets at its header, up to what the header declares: a 1 MB agent state then
// grows in place (it was copied into each doubled buffer, ~1.2 MB of copies per frame). The
// room is only reserved, not touched: what a declared length costs before its bytes come is
// this much address space at most, within the frame limit already checked. The 64 KiB over
// 4 MiB hold an answer's fields around a 4 MiB state: without them such a frame outgrew its
// room by a few bytes and was copied whole into a doubled buffer (8 MiB, 4 MiB of it fresh).
constexpr std::size_t kReservedAhead = 4 * 1024 * 1024 + 64 * 1024;
}  // namespace

bool prepare_timed_receive(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) return false;
  const timeval slice{0, kReceiveSliceMs * 1000};
  return ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice) == 0;
}

void widen_channel_buffers(const int (&pair)[2]) noexcept {
  for (const int fd : pair) {
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &kChannelSendBufferBytes, sizeof kChannelSendBufferBytes);
  }
}

HostChannel::HostChannel(UniqueFd fd, Clock::time_point deadline, const std::atomic<bool>* abort, ChannelWaits waits)
    : fd_(std::move(fd)), waits_(waits), deadline_(deadline), abort_(abort) {
  if (waits_ == ChannelWaits::poll) ::fcntl(fd_.get(), F_SETFL, ::fcntl(fd_.get(), F_GETFL) | O_NONBLOCK);
}

ssize_t HostChannel::receive_some(std::uint8_t* at, std::size_t n, ChannelStatus& status) {
  for (;;) {
    if (waits_ == ChannelWaits::timed_receive) {
      // The recv is the wait; between slices, the deadline and the abort flag.
      if (abort_ != nullptr && abort_->load(std::memory_order_relaxed)) {
        status = ChannelStatus::aborted;
        return -1;
      }
    }
    int flags = 0;
    if (waits_ == ChannelWaits::timed_receive && Clock::now() >= deadline_) {
      if (!late_look()) {
        status = ChannelStatus::deadline;
        return -1;
      }
      flags = MSG_DONTWAIT;  // what arrived by now, without waiting for more
    }
    const ssize_t got = ::recv(fd_.get(), at, n, flags);
    if (got >= 0) return got;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      status = ChannelStatus::closed;
      return -1;
    }
    if (waits_ == ChannelWaits::poll) {
      if (ChannelStatus s = wait(POLLIN); s != ChannelStatus::ok) {
        status = s;
        return -1;
      }
    }
  }
}

ChannelStatus HostChannel::wait(short events) {
  for (;;) {
    if (abort_ != nullptr && abort_->load(std::memory_order_relaxed)) return ChannelStatus::aborted;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
    if (left <= 0 && !late_look()) return ChannelStatus::deadline;
    int timeout = static_cast<int>(std::clamp<long long>(left, 0, 1'000'000));
    if (abort_ != nullptr) timeout = std::min(timeout, kAbortPollMs);
    pollfd p{fd_.get(), events, 0};
    const int n = ::poll(&p, 1, timeout);
    if (n < 0 && errno != EINTR) return ChannelStatus::closed;
    if (n > 0) return ChannelStatus::ok;  // readable, writable, or hung up: the call says which
  }
}

bool HostChannel::late_look() {
  if (late_look_taken_) return false;
  late_look_taken_ = true;
  return true;
}

UniqueFd HostChannel::release() {
  if (!buffer_.empty()) return UniqueFd();
  return std::move(fd_);
}

ChannelStatus HostChannel::write(std::span<const std::uint8_t> frame) {
  while (!frame.empty()) {
    const ssize_t n = ::send(fd_.get(), frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
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
  ChannelStatus status = ChannelStatus::ok;
  const ssize_t n = receive_some(out.data() + at, want, status);
  out.resize(at + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
  if (n > 0) return ChannelStatus::ok;
  return n == 0 ? ChannelStatus::closed : status;
}

ChannelStatus HostChannel::fill_buffer() {
  std::uint8_t chunk[kHeaderReadChunk];
  // A frame's header is read after the host wrote and the guest has yet to answer (a request,
  // a host call's reply): it has nearly never arrived yet, so the wait comes first (poll, recv)
  // rather than after a recv that finds nothing (recv, poll, recv). A timed_receive channel
  // waits in the recv itself.
  if (waits_ == ChannelWaits::poll) {
    if (ChannelStatus s = wait(POLLIN); s != ChannelStatus::ok) return s;
  }
  ChannelStatus status = ChannelStatus::ok;
  const ssize_t n = receive_some(chunk, sizeof chunk, status);
  if (n > 0) {
    buffer_.insert(buffer_.end(), chunk, chunk + n);
    return ChannelStatus::ok;
  }
  return n == 0 ? ChannelStatus::closed : status;
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
  payload.clear();
  payload.reserve(std::min(length, kReservedAhead));
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
