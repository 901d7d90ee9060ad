// Frame I/O with a deadline on the host's end of a guest channel.
#include "host_channel.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

namespace sojourn::sandbox {

namespace {
constexpr int kAbortPollMs = 10;  // how often a wait looks at the abort flag
constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::size_t kMaxReadChunk = 1024 * 1024;
}  // namespace

HostChannel::HostChannel(UniqueFd fd, Clock::time_point deadline, const std::atomic<bool>* abort)
    : fd_(std::move(fd)), deadline_(deadline), abort_(abort) {
  ::fcntl(fd_.get(), F_SETFL, ::fcntl(fd_.get(), F_GETFL) | O_NONBLOCK);
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

ChannelStatus HostChannel::read(channel::Kind& kind, std::vector<std::uint8_t>& payload, std::uint64_t max_payload) {
  std::uint64_t need = channel::kHeaderBytes;
  bool have_header = false;
  channel::FrameHeader header;
  for (;;) {
    if (!have_header && buffer_.size() >= channel::kHeaderBytes) {
      header = channel::parse_header(std::span<const std::uint8_t, channel::kHeaderBytes>(buffer_.data(), channel::kHeaderBytes));
      if (header.length > max_payload) return ChannelStatus::too_large;
      have_header = true;
      need = channel::kHeaderBytes + header.length;
    }
    if (have_header && buffer_.size() >= need) {
      kind = header.kind;
      payload.assign(buffer_.begin() + channel::kHeaderBytes, buffer_.begin() + static_cast<std::ptrdiff_t>(need));
      buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(need));
      return ChannelStatus::ok;
    }
    const std::size_t old = buffer_.size();
    // Bounded chunks: resize zero-fills, so growing straight to a large frame's size on
    // every partial read would cost quadratic time.
    const std::size_t want = std::clamp<std::size_t>(static_cast<std::size_t>(need) - std::min<std::size_t>(old, need),
                                                     kReadChunk, kMaxReadChunk);
    buffer_.resize(old + want);
    const ssize_t n = ::recv(fd_.get(), buffer_.data() + old, want, 0);
    buffer_.resize(old + (n > 0 ? static_cast<std::size_t>(n) : 0));
    if (n > 0) continue;
    if (n == 0) return ChannelStatus::closed;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return ChannelStatus::closed;
    if (ChannelStatus s = wait(POLLIN); s != ChannelStatus::ok) return s;
  }
}

}  // namespace sojourn::sandbox
