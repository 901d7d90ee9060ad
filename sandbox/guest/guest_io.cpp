// The guest's end of its channel: frames read (with the bytes a read took past them kept for
// the next) and written.
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "sandbox/guest/guest_serve.hpp"
#include "sandbox/guest/guest_serve_internal.hpp"

namespace sojourn::sandbox::guest {

namespace {

// What one read of the channel took past the bytes asked for: a frame's header is read with
// as much as has arrived, so a request (or a host call's reply) costs one read, not two. Only
// this guest's host writes here, so kept bytes are its own next frame's; they belong to one
// descriptor (a new one drops them).
struct ReadAhead {
  int fd = -1;
  std::size_t at = 0;
  std::size_t end = 0;
  std::uint8_t bytes[16 * 1024];
};
ReadAhead g_ahead;

// Whether the guest waits for the channel in poll (false once poll was not answered).
bool g_wait_in_poll = true;

// Waits for the channel's next bytes in poll, not in the read. A task asleep in a unix stream
// socket's read shares its wait queue with the socket's "room to write" wake-up, which the
// kernel sends each time the host reads what this guest wrote, and a read's wait does not
// look at which event woke it: every frame the host took (a host call, the answer) woke the
// waiting guest for nothing, two context switches each. A poll for POLLIN is woken only by
// bytes, an end or an error. Where poll is not answered (the microVM's syscall table has no
// row for it: -ENOSYS), the read waits alone from then on.
void await_readable(int fd) {
  if (!g_wait_in_poll) return;
  pollfd channel{fd, POLLIN, 0};
  for (;;) {
    // The raw syscall: the filter allows poll (one descriptor), not ppoll, whichever glibc picks.
    if (::syscall(SYS_poll, &channel, 1UL, -1L) >= 0) return;
    if (errno == EINTR) continue;
    g_wait_in_poll = false;
    return;
  }
}

}  // namespace

namespace serve_internal {

bool read_exact(int fd, std::uint8_t* at, std::size_t n) {
  ReadAhead& ahead = g_ahead;
  if (ahead.fd != fd) {
    // Not the bytes: nothing past `end` is read, and zeroing all 16 KiB made a new guest
    // fault in four .bss pages (copy-on-write from the zygote) before its first request.
    ahead.fd = fd;
    ahead.at = 0;
    ahead.end = 0;
  }
  const std::size_t kept = std::min(n, ahead.end - ahead.at);
  if (kept > 0) {
    std::memcpy(at, ahead.bytes + ahead.at, kept);
    ahead.at += kept;
    at += kept;
    n -= kept;
  }
  while (n > 0) {
    // Large reads (a heap image's pages) go straight into place; small ones through the buffer.
    const bool direct = n >= sizeof ahead.bytes;
    await_readable(fd);
    const ssize_t got = direct ? ::read(fd, at, n) : ::read(fd, ahead.bytes, sizeof ahead.bytes);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    std::size_t used = static_cast<std::size_t>(got);
    if (!direct) {
      used = std::min(n, used);
      std::memcpy(at, ahead.bytes, used);
      ahead.at = used;
      ahead.end = static_cast<std::size_t>(got);
    }
    at += used;
    n -= used;
  }
  return true;
}

bool bytes_kept(int fd) { return g_ahead.fd == fd && g_ahead.at < g_ahead.end; }

}  // namespace serve_internal

using serve_internal::read_exact;

std::optional<Frame> read_frame(int fd, std::uint32_t max_payload) {
  std::uint8_t header[channel::kHeaderBytes];
  if (!read_exact(fd, header, sizeof header)) return std::nullopt;
  const channel::FrameHeader h = channel::parse_header(header);
  if (h.length > max_payload) return std::nullopt;
  Frame frame{h.kind, FrameBytes(h.length)};  // every byte written by the read below
  if (!read_exact(fd, frame.payload.data(), frame.payload.size())) return std::nullopt;
  return frame;
}

bool write_all(int fd, std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace sojourn::sandbox::guest
