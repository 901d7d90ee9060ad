// Tests of the host's end of a guest channel at a run's deadline: an answer that waits on the
// channel when the host looks past its deadline is taken (the host, not the guest, was late),
// once; a guest that sent nothing, or only part of a frame, is past its deadline.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
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
