// The guest's side of a run: read one request from the channel, run it with the same
// sandbox code as the trusted level, forward host calls over the channel, write the result.
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "sandbox/process/guest_wire.hpp"

namespace sojourn::sandbox::guest {

// Bytes a read fills at once: sized without zero-filling them first (a 1 MB agent state was
// memset, then overwritten by the read). Nothing is read from them before the read wrote
// them, so no byte of an earlier step's freed blocks can show through.
template <class T>
struct UnfilledAllocator : std::allocator<T> {
  template <class U> struct rebind { using other = UnfilledAllocator<U>; };
  UnfilledAllocator() noexcept = default;
  template <class U> UnfilledAllocator(const UnfilledAllocator<U>&) noexcept {}
  template <class U> void construct(U* p) noexcept { ::new (static_cast<void*>(p)) U; }
  template <class U, class... A> void construct(U* p, A&&... a) { ::new (static_cast<void*>(p)) U(std::forward<A>(a)...); }
};
using FrameBytes = std::vector<std::uint8_t, UnfilledAllocator<std::uint8_t>>;

// Blocking frame I/O on the guest's end of a channel (retrying EINTR).
struct Frame {
  channel::Kind kind{};
  FrameBytes payload;
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
