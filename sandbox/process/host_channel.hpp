// The host's end of a run's channel: non-blocking frame reads and writes that give up at
// a deadline or when the node aborts, so a guest that stalls can never block the host.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "guest_wire.hpp"
#include "unique_fd.hpp"

namespace sojourn::sandbox {

enum class ChannelStatus { ok, closed, deadline, aborted, too_large };

class HostChannel {
 public:
  using Clock = std::chrono::steady_clock;
  HostChannel(UniqueFd fd, Clock::time_point deadline, const std::atomic<bool>* abort);

  ChannelStatus write(std::span<const std::uint8_t> frame);
  // The next frame; its payload may be at most `max_payload` bytes.
  ChannelStatus read(channel::Kind& kind, std::vector<std::uint8_t>& payload, std::uint64_t max_payload);

 private:
  // Waits for `events`; ok, deadline or aborted (checked every few milliseconds).
  ChannelStatus wait(short events);
  UniqueFd fd_;
  Clock::time_point deadline_;
  const std::atomic<bool>* abort_;
  std::vector<std::uint8_t> buffer_;  // bytes read past the last frame
};

}  // namespace sojourn::sandbox
