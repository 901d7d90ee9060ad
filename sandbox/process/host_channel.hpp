// The host's end of a run's channel: non-blocking frame reads and writes that give up at
// a deadline or when the node aborts, so a guest that stalls can never block the host.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "sandbox/process/guest_wire.hpp"
#include "sandbox/process/unique_fd.hpp"

namespace sojourn::sandbox {

// too_large: a frame over ReadLimits::max_payload; result_too_large: the result frame over
// ReadLimits::max_result (its declared length is in HostChannel::refused_length()).
enum class ChannelStatus { ok, closed, deadline, aborted, too_large, result_too_large };

// The largest frames the host takes from a guest, checked against each header before its
// payload is read: any frame, and the run's final (result) frame.
struct ReadLimits {
  std::uint64_t max_payload = 0;
  channel::Kind result_kind{};
  std::uint64_t max_result = 0;
};

// How a channel waits for the guest's next bytes. `poll`: the descriptor is made non-blocking
// and each wait is a poll, then a recv. `timed_receive`: the descriptor is blocking with a
// receive timeout of kReceiveSliceMs (prepare_timed_receive, once for a warm guest's life), so
// a wait for the guest's answer is the recv itself: one syscall, not two, on each frame of a
// run (the deadline and abort flag are looked at between slices). Writes never block in
// either mode.
enum class ChannelWaits { poll, timed_receive };

// The receive timeout of a timed_receive channel: how late, at most, a deadline or an abort
// is noticed while the guest is silent.
inline constexpr int kReceiveSliceMs = 1;
// Sets up `fd` (a stream socket) for timed_receive: blocking, with a receive timeout of
// kReceiveSliceMs. False when the kernel refused either.
bool prepare_timed_receive(int fd);

// The send buffer each end of a run's channel asks for (the kernel caps it at
// net.core.wmem_max and doubles it for its bookkeeping). At the default (~208 KiB) a 1 MB
// agent state crossed in five or more pieces, each a switch between the writer, blocked on a
// full buffer, and the reader; with this much room a frame that size is one write and one
// wake-up. Only a cap: the kernel holds what is written and not yet read, no more.
inline constexpr int kChannelSendBufferBytes = 2 * 1024 * 1024;
// Asks for kChannelSendBufferBytes on both ends of a new channel `pair`; a refusal leaves the
// default (slower for large frames, otherwise the same).
void widen_channel_buffers(const int (&pair)[2]) noexcept;

class HostChannel {
 public:
  using Clock = std::chrono::steady_clock;
  // With `waits` timed_receive, `fd` was set up by prepare_timed_receive.
  HostChannel(UniqueFd fd, Clock::time_point deadline, const std::atomic<bool>* abort,
              ChannelWaits waits = ChannelWaits::poll);

  ChannelStatus write(std::span<const std::uint8_t> frame);
  // The next frame, within `limits`. The payload grows as its bytes arrive and is read
  // straight into place; a frame over a limit is refused at its header, unread.
  ChannelStatus read(channel::Kind& kind, std::vector<std::uint8_t>& payload, const ReadLimits& limits);
  // Moves the deadline later by `by`: time the host spent on its own work while the guest
  // waited (sealing or opening a strong step's pages) is not the guest's.
  void extend_deadline(Clock::duration by) {
    deadline_ += by;
    late_look_taken_ = false;
  }
  // A new deadline: the next run of a burst, counted from its predecessor's answer.
  void set_deadline(Clock::time_point deadline) {
    deadline_ = deadline;
    late_look_taken_ = false;
  }
  // The declared payload length of the last frame refused as too large.
  std::uint64_t refused_length() const { return refused_length_; }
  // The descriptor, for a warm guest's next run; invalid (and closed) when bytes past the
  // last frame were received: a guest that wrote ahead of its next request is not reused.
  UniqueFd release();

 private:
  // Waits for `events`; ok, deadline or aborted (checked every few milliseconds).
  ChannelStatus wait(short events);
  // Once the deadline passed: true the first time (one look, without waiting, at what the
  // guest sent by then), false after. The host's own thread may have been off its CPU past
  // the deadline while the guest's answer waited on the channel: that answer came in time,
  // and killing the guest for it would cost a fork. A guest that sent nothing by then is
  // past its deadline whatever the look finds later; one look bounds what the host takes.
  bool late_look();
  bool late_look_taken_ = false;
  // Receives up to `n` bytes into `at`: > 0 bytes received, 0 end of file, < 0 a status to
  // return (set in `status`). Waits as the channel's mode says.
  ssize_t receive_some(std::uint8_t* at, std::size_t n, ChannelStatus& status);
  UniqueFd fd_;
  ChannelWaits waits_;
  Clock::time_point deadline_;
  const std::atomic<bool>* abort_;
  // Received bytes not yet part of a frame's payload: a header, or what came after it.
  std::vector<std::uint8_t> buffer_;
  std::uint64_t refused_length_ = 0;
  // Appends what arrives next (a header and whatever follows it) to buffer_.
  ChannelStatus fill_buffer();
  // Receives into `out` at `at` (at most `want` bytes); ok when some arrived.
  ChannelStatus receive(std::vector<std::uint8_t>& out, std::size_t at, std::size_t want);
};

}  // namespace sojourn::sandbox
