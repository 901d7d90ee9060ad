// Internal: whether the network thread runs an evaluation itself (NodeServer's fast path) or
// leaves it to the workers, from when the previous inline attempt ended. A pure function of
// the times, so that tests decide without sockets or a loaded machine's timing.
#pragma once

#include <chrono>

namespace sojourn {

enum class InlineTurn {
  any_level,     // the thread was free: trusted, or a jailed one in a warm guest
  trusted_only,  // back to back within the streak: trusted only (jailed ones join a burst)
  workers,       // back to back past the streak: this one goes to the workers
};

// Back to back = within kBackToBack of the last inline attempt's end. In the reader, the next
// frame of a pipelined burst comes a microsecond or two after the last run (already
// buffered); a sequential client's next request needs a round trip through the kernel and its
// own wake-up, at least ~10 us on loopback (30 us sent about half of a sequential client's
// requests to the workers).
inline constexpr auto kBackToBack = std::chrono::microseconds(5);
// How long the thread runs trusted evaluations back to back before it hands one to the
// workers, so that one connection's burst does not keep every run on this thread.
inline constexpr auto kInlineStreak = std::chrono::microseconds(500);

// `streak_start` is the first attempt of the current streak: a new one starts when the
// thread was free.
inline InlineTurn inline_turn(std::chrono::steady_clock::time_point now, std::chrono::steady_clock::time_point last_end,
                              std::chrono::steady_clock::time_point& streak_start) {
  if (now - last_end >= kBackToBack) {
    streak_start = now;
    return InlineTurn::any_level;
  }
  return now - streak_start < kInlineStreak ? InlineTurn::trusted_only : InlineTurn::workers;
}

}  // namespace sojourn
