// Private to guest_session*.cpp: how a run that got no answer ends, shared by the runs in a
// fresh guest (guest_session.cpp) and in a warm one (guest_session_warm.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "sandbox/process/guest_session.hpp"

namespace sojourn::sandbox::session_internal {

// The guest is killed (it broke the protocol, or the host gave up on it) or the zygote's
// report says how it ended by itself.
Result<std::vector<std::uint8_t>> unanswered(ZygoteLink& zygote, const SpawnedGuest& guest, const Conversation& talk,
                                             const Limits& limits, SessionCounters& counters);

}  // namespace sojourn::sandbox::session_internal
