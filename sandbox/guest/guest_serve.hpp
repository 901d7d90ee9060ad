// The guest's side of a run: read one request from the channel, run it with the same
// sandbox code as the trusted level, forward host calls over the channel, write the result.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "sandbox/process/guest_wire.hpp"

namespace sojourn::sandbox::guest {

// Blocking frame I/O on the guest's end of a channel (retrying EINTR).
struct Frame {
  channel::Kind kind{};
  std::vector<std::uint8_t> payload;
};
std::optional<Frame> read_frame(int fd, std::uint32_t max_payload);
bool write_all(int fd, std::span<const std::uint8_t> bytes);
// How many reads the current run carries (the test hooks' lying guest).
std::size_t carried_read_count();

// Serves one run on `fd`: returns once the result (or error) is written, or the channel
// broke. Never throws. True when the guest may serve another run after its arena is reset:
// a run was answered and its arena neither came from a heap image nor went into one.
bool serve_one_run(int fd);

// Hooks compiled only into the test guest (sojourn-guest-test): a chunk whose first line
// is "--@syscall NAME" makes that raw syscall after the filter is in place, "--@spin" spins
// in C where no Lua hook can see it. No-ops in the real guest.
void run_test_hook(std::string_view source);

}  // namespace sojourn::sandbox::guest
