// Tests of the host's end of a guest channel at a run's deadline: an answer that waits on the
// channel when the host looks past its deadline is taken (the host, not the guest, was late),
// once; a guest that sent nothing, or only part of a frame, is past its deadline.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <thread>
#include <utility>
#include <vector>

#include "sandbox/process/host_channel.hpp"

namespace {

using sojourn::sandbox::ChannelStatus;
using sojourn::sandbox::ChannelWaits;
using sojourn::sandbox::HostChannel;
using sojourn::sandbox::ReadLimits;
using sojourn::sandbox::UniqueFd;
namespace channel = sojourn::sandbox::channel;

std::pair<UniqueFd, UniqueFd> channel_pair(ChannelWaits waits) {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  if (waits == ChannelWaits::timed_receive) REQUIRE(sojourn::sandbox::prepare_timed_receive(fds[0]));
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

void send_frame(int fd, channel::Kind kind, std::vector<std::uint8_t> payload) {
  const auto header = channel::frame_header(kind, static_cast<std::uint32_t>(payload.size()));
  std::vector<std::uint8_t> frame(header.begin(), header.end());
  frame.insert(frame.end(), payload.begin(), payload.end());
  REQUIRE(::write(fd, frame.data(), frame.size()) == static_cast<ssize_t>(frame.size()));
}

const ReadLimits kLimits{1024, channel::Kind::run_done, 1024};
const auto kPast = [] { return HostChannel::Clock::now() - std::chrono::milliseconds(5); };

}  // namespace

TEST_CASE("past its deadline, a channel takes an answer that already waits, once, and nothing it would wait for") {
  for (const ChannelWaits waits : {ChannelWaits::timed_receive, ChannelWaits::poll}) {
    CAPTURE(static_cast<int>(waits));
    channel::Kind kind{};
    std::vector<std::uint8_t> payload;
    {
      // The answer arrived before the host looked: taken, and the channel stays reusable.
      auto [host_end, guest_end] = channel_pair(waits);
      send_frame(guest_end.get(), channel::Kind::run_done, {7, 8, 9});
      HostChannel host(std::move(host_end), kPast(), nullptr, waits);
      CHECK(host.read(kind, payload, kLimits) == ChannelStatus::ok);
      CHECK(kind == channel::Kind::run_done);
      CHECK(payload == std::vector<std::uint8_t>{7, 8, 9});
      // One look per deadline: a second frame, there too, is past it.
      send_frame(guest_end.get(), channel::Kind::host_call, {1});
      CHECK(host.read(kind, payload, kLimits) == ChannelStatus::deadline);
    }
    {
      // Nothing sent by then: past the deadline at once, with no wait for a later answer.
      auto [host_end, guest_end] = channel_pair(waits);
      HostChannel host(std::move(host_end), kPast(), nullptr, waits);
      const auto begin = std::chrono::steady_clock::now();
      CHECK(host.read(kind, payload, kLimits) == ChannelStatus::deadline);
      CHECK(std::chrono::steady_clock::now() - begin < std::chrono::milliseconds(500));
    }
    {
      // Only a frame's header by then: its payload is not waited for.
      auto [host_end, guest_end] = channel_pair(waits);
      const auto header = channel::frame_header(channel::Kind::run_done, 3);
      REQUIRE(::write(guest_end.get(), header.data(), header.size()) == static_cast<ssize_t>(header.size()));
      HostChannel host(std::move(host_end), kPast(), nullptr, waits);
      CHECK(host.read(kind, payload, kLimits) == ChannelStatus::deadline);
    }
    {
      // A new deadline (a burst's next run) gets a look of its own.
      auto [host_end, guest_end] = channel_pair(waits);
      send_frame(guest_end.get(), channel::Kind::run_done, {1});
      HostChannel host(std::move(host_end), kPast(), nullptr, waits);
      CHECK(host.read(kind, payload, kLimits) == ChannelStatus::ok);
      CHECK(payload == std::vector<std::uint8_t>{1});
      send_frame(guest_end.get(), channel::Kind::run_done, {2});
      host.set_deadline(kPast());
      CHECK(host.read(kind, payload, kLimits) == ChannelStatus::ok);
      CHECK(payload == std::vector<std::uint8_t>{2});
      send_frame(guest_end.get(), channel::Kind::run_done, {3});
      CHECK(host.read(kind, payload, kLimits) == ChannelStatus::deadline);
    }
  }
}

TEST_CASE("a run's channel takes a 1 MB frame in one write, and the host reads it whole") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  sojourn::sandbox::widen_channel_buffers(fds);
  UniqueFd host_end(fds[0]);
  UniqueFd guest_end(fds[1]);
  long wmem_max = 0;
  std::ifstream("/proc/sys/net/core/wmem_max") >> wmem_max;
  // The kernel doubles what it grants (for its bookkeeping) and caps the request at wmem_max.
  const long granted = 2 * std::min<long>(sojourn::sandbox::kChannelSendBufferBytes, wmem_max);
  for (const int fd : fds) {
    int sndbuf = 0;
    socklen_t len = sizeof sndbuf;
    REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0);
    if (wmem_max > 0) CHECK(sndbuf >= granted);
  }
  std::vector<std::uint8_t> payload(std::size_t{1} << 20);
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::uint8_t>(i * 131 + (i >> 12));
  const auto header = channel::frame_header(channel::Kind::agent_done, static_cast<std::uint32_t>(payload.size()));
  std::vector<std::uint8_t> frame(header.begin(), header.end());
  frame.insert(frame.end(), payload.begin(), payload.end());
  // Non-blocking: at the default send buffer (~208 KiB) this write would stop after a fifth.
  const ssize_t sent = ::send(guest_end.get(), frame.data(), frame.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (wmem_max >= sojourn::sandbox::kChannelSendBufferBytes) {
    CHECK(sent == static_cast<ssize_t>(frame.size()));
  } else {
    MESSAGE("net.core.wmem_max is ", wmem_max, ": the one-write check is skipped");
  }
  REQUIRE(sent > 0);
  // Whatever did not fit goes from another thread while the host reads.
  std::thread rest([&, off = static_cast<std::size_t>(sent)]() mutable {
    while (off < frame.size()) {
      const ssize_t n = ::send(guest_end.get(), frame.data() + off, frame.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<std::size_t>(n);
    }
  });
  const ReadLimits limits{std::uint64_t{2} << 20, channel::Kind::agent_done, std::uint64_t{2} << 20};
  HostChannel host(std::move(host_end), HostChannel::Clock::now() + std::chrono::seconds(10), nullptr);
  channel::Kind kind{};
  std::vector<std::uint8_t> got{1, 2, 3};  // a reused vector: the frame replaces what it held
  const ChannelStatus status = host.read(kind, got, limits);
  rest.join();
  REQUIRE(status == ChannelStatus::ok);
  CHECK(kind == channel::Kind::agent_done);
  CHECK(got.size() == payload.size());
  CHECK(got == payload);
}
