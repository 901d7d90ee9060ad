// The host channel's room for a large payload: an agent step's answer around a 4 MiB state is
// read into the room reserved at its header, not copied into a doubled buffer.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "sandbox/process/host_channel.hpp"

namespace {

using sojourn::sandbox::ChannelStatus;
using sojourn::sandbox::HostChannel;
using sojourn::sandbox::ReadLimits;
using sojourn::sandbox::UniqueFd;
namespace channel = sojourn::sandbox::channel;

}  // namespace

TEST_CASE("a frame a little over 4 MiB is read whole into the room its header reserved") {
  for (const std::size_t length : {std::size_t{4} << 20, (std::size_t{4} << 20) + 200, (std::size_t{4} << 20) + 60000}) {
    CAPTURE(length);
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    UniqueFd host_end(fds[0]);
    UniqueFd guest_end(fds[1]);
    std::vector<std::uint8_t> frame;
    const auto header = channel::frame_header(channel::Kind::run_done, static_cast<std::uint32_t>(length));
    frame.assign(header.begin(), header.end());
    for (std::size_t i = 0; i < length; ++i) frame.push_back(static_cast<std::uint8_t>(i * 131 + (i >> 12)));
    std::thread guest([&] {
      std::size_t at = 0;
      while (at < frame.size()) {
        const ssize_t n = ::write(guest_end.get(), frame.data() + at, frame.size() - at);
        if (n <= 0) return;
        at += static_cast<std::size_t>(n);
      }
    });
    HostChannel host(std::move(host_end), HostChannel::Clock::now() + std::chrono::seconds(30), nullptr);
    channel::Kind kind{};
    std::vector<std::uint8_t> payload;
    const ReadLimits limits{64u << 20, channel::Kind::run_done, 64u << 20};
    const ChannelStatus status = host.read(kind, payload, limits);
    guest.join();
    REQUIRE(status == ChannelStatus::ok);
    CHECK(kind == channel::Kind::run_done);
    REQUIRE(payload.size() == length);
    CHECK(std::equal(payload.begin(), payload.end(), frame.begin() + static_cast<std::ptrdiff_t>(header.size())));
    // Read in place: the buffer never outgrew its room (a doubled one held 8 MiB).
    CHECK(payload.capacity() < length + (std::size_t{1} << 20));
  }
}
