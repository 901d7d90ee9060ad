// Private to guest_serve.cpp, guest_io.cpp and guest_strong.cpp: what the serving loop, the
// channel's reads and the strong steps share.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sandbox/lua/lua_strong.hpp"
#include "sandbox/process/guest_wire.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox::guest::serve_internal {

// Reads exactly `n` bytes of the channel into `at` (false when it ended or broke), through the
// bytes a previous read took past what it was asked for.
bool read_exact(int fd, std::uint8_t* at, std::size_t n);
// Whether bytes `fd`'s last read took past what was asked for wait to be read (the next frame's).
bool bytes_kept(int fd);

// The trusted level's input for a run request.
RunInput input_of(const channel::RunRequest& request);

// A strong stop's sink (guest_strong.cpp): the arena's used span to the host, its pages by the
// channel or, with `direct`, read by the host while this guest waits for its word.
strong::StopSink span_writer(int fd, bool direct);

// Reads the kept pages of a checked page map back into a fresh arena at their places, and
// resumes the agent in it.
Result<AgentOutcome> resume_strong(int fd, const channel::ResumeRequest& request, HostCalls* host);

}  // namespace sojourn::sandbox::guest::serve_internal
