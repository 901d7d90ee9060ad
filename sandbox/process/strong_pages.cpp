// Kept pages straight between the host and a guest's arena (strong_pages.hpp). The bytes read
// out of a guest stay untrusted: the host only compresses and hashes them (a guest that changes
// them meanwhile can only spoil its own image), and what it writes into a guest was checked first.
#include "sandbox/process/strong_pages.hpp"

#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "sandbox/guest/arena.hpp"
#include "sandbox/image/scratch.hpp"

namespace sojourn::sandbox {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kPage = image::kPageBytes;

std::uint64_t micros_since(Clock::time_point t0) {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
}

Error crashed(const std::string& why) { return make_error(Errc::guest_crashed, "guest crashed: " + why); }

bool refusal(int error) { return error == EPERM || error == EACCES || error == ENOSYS; }

}  // namespace

GuestArenaPages::GuestArenaPages(int pid, int pidfd, std::uint64_t base, std::span<const std::uint8_t> page_map)
    : pid_(pid), pidfd_(pidfd), base_(base) {
  const std::uint64_t pages = page_map.size() * 8;
  for (std::uint64_t i = 0; i < pages;) {
    if (((page_map[i / 8] >> (i % 8)) & 1u) == 0) {
      ++i;
      continue;
    }
    std::uint64_t j = i + 1;
    while (j < pages && ((page_map[j / 8] >> (j % 8)) & 1u) != 0) ++j;
    runs_.emplace_back(i, j - i);
    i = j;
  }
}

GuestArenaPages::Outcome GuestArenaPages::read(std::span<std::uint8_t> into) { return move(into.data(), into.size(), false); }

GuestArenaPages::Outcome GuestArenaPages::write(std::span<const std::uint8_t> from) {
  return move(const_cast<std::uint8_t*>(from.data()), from.size(), true);  // process_vm_writev only reads it
}

GuestArenaPages::Outcome GuestArenaPages::move(void* local, std::size_t bytes, bool to_guest) {
  // The remote side: the next `bytes` of kept pages, one iovec per run (or part of one). A piece
  // of kReadPiece bytes spans at most 256 pages, under the kernel's IOV_MAX of 1024.
  std::vector<iovec> remote;
  std::uint64_t left = bytes / kPage;
  while (left > 0) {
    if (run_ == runs_.size()) {
      errno_ = EINVAL;
      return Outcome::failed;  // more bytes than the map keeps
    }
    const auto [first, count] = runs_[run_];
    const std::uint64_t n = std::min(left, count - into_run_);
    // SAFETY: only an address in the guest's arena is formed here, never dereferenced by the host.
    remote.push_back(iovec{reinterpret_cast<void*>(base_ + (first + into_run_) * kPage), static_cast<std::size_t>(n * kPage)});
    into_run_ += n;
    left -= n;
    if (into_run_ == count) {
      ++run_;
      into_run_ = 0;
    }
  }
  // The pid names the guest only until the zygote reaps it: its pidfd says it has not been (a
  // zombie still answers). Reuse in the microseconds to the call would need the whole pid space.
  if (::syscall(SYS_pidfd_send_signal, pidfd_, 0, nullptr, 0) != 0) {
    errno_ = errno;
    return Outcome::failed;
  }
  std::size_t done = 0;
  std::size_t at = 0;  // the first remote iovec not yet wholly moved
  while (done < bytes) {
    const iovec mine{static_cast<std::uint8_t*>(local) + done, bytes - done};
    const ssize_t n = to_guest ? ::process_vm_writev(pid_, &mine, 1, remote.data() + at, remote.size() - at, 0)
                               : ::process_vm_readv(pid_, &mine, 1, remote.data() + at, remote.size() - at, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      errno_ = n < 0 ? errno : EFAULT;
      return done == 0 && refusal(errno_) ? Outcome::refused : Outcome::failed;
    }
    // A partial transfer stops at a remote iovec's boundary or inside one: go on from there.
    done += static_cast<std::size_t>(n);
    for (std::size_t skip = static_cast<std::size_t>(n); skip > 0 && at < remote.size();) {
      const std::size_t take = std::min(skip, remote[at].iov_len);
      remote[at].iov_base = static_cast<std::uint8_t*>(remote[at].iov_base) + take;
      remote[at].iov_len -= take;
      skip -= take;
      if (remote[at].iov_len == 0) ++at;
    }
  }
  return Outcome::ok;
}

std::optional<Error> take_stop_pages(HostChannel& channel, std::span<const std::uint8_t> payload, DirectPages& direct,
                                     const ReadLimits& limits, ChannelStatus& status) {
  Result<channel::HeapSpan> span = channel::decode_payload<channel::HeapSpan>(payload);
  if (!span) return crashed("a strong stop without its heap span (" + span.error().message + ")");
  const std::uint64_t arena_bytes = direct.source.arena_bytes;
  if (span->arena_bytes != arena_bytes || span->used_bytes > arena_bytes || span->agent_handle < direct.source.arena_base ||
      span->agent_handle >= direct.source.arena_base + span->used_bytes || !span->pages.empty()) {
    return crashed("its heap span does not fit its arena");
  }
  image::ImageSource source = direct.source;
  source.agent_handle = span->agent_handle;
  const auto map = std::span(reinterpret_cast<const std::uint8_t*>(span->page_map.data()), span->page_map.size());
  direct.mark("span_received");
  const auto t0 = Clock::now();
  const auto unfit = [](const Error& e) {
    return e.code == Errc::invalid_argument ? crashed("its heap span does not fit its arena (" + e.message + ")") : e;
  };
  bool refused = !direct.enabled || direct.pid <= 0;
  // The guest waits for its word from here on (it wrote its span, then reads): its CPU clock,
  // read off its CPU, holds the whole step up to the stop (read_parked below).
  const auto read_parked = [&] {
    if (direct.parked_clock) direct.parked_cpu_us = direct.parked_clock();
  };
  if (!refused) {
    GuestArenaPages pages(direct.pid, direct.pidfd, source.arena_base, map);
    Result<std::vector<std::uint8_t>> sealed =
        image::take_image(source, span->used_bytes, map, [&](std::span<std::uint8_t> into) -> Result<void> {
          const GuestArenaPages::Outcome got = pages.read(into);
          if (got == GuestArenaPages::Outcome::ok) return {};
          // Refused (by the kernel, not the guest): sealed again below from the channel's pages.
          refused = got == GuestArenaPages::Outcome::refused;
          return crashed(std::string("its arena could not be read (") + std::strerror(pages.last_errno()) + ")");
        });
    if (sealed) {
      direct.image = std::move(*sealed);
      ++direct.direct;
      direct.raw_bytes = span->used_bytes;
      direct.image_us = micros_since(t0);
      direct.mark("span_sealed");
      // The sealing was the host's work while the guest waited: not the guest's wall time.
      channel.extend_deadline(std::chrono::microseconds(direct.image_us));
      read_parked();  // after the sealing: the guest has long been asleep on its read
      status = channel.write(channel::frame_header(channel::Kind::pages_taken, 0));
      return std::nullopt;
    }
    if (!refused) return unfit(sealed.error());
  }
  if (refused) {
    // The guest writes its kept pages into the channel after all.
    read_parked();
    status = channel.write(channel::frame_header(channel::Kind::pages_wanted, 0));
    if (status != ChannelStatus::ok) return std::nullopt;
    channel::Kind kind{};
    std::vector<std::uint8_t> pages;
    status = channel.read(kind, pages, limits);
    if (status != ChannelStatus::ok) return std::nullopt;
    if (kind != channel::Kind::heap_pages) {
      return crashed("unexpected frame kind " + std::to_string(static_cast<int>(kind)) + " (" +
                     std::string(channel::kind_name(kind)) + ")");
    }
    const auto sealing = Clock::now();
    Result<std::vector<std::uint8_t>> sealed = image::take_image(source, image::KeptPages{span->used_bytes, map, pages});
    if (!sealed) return unfit(sealed.error());
    direct.image = std::move(*sealed);
    ++direct.by_channel;
    // Only the sealing was the host's own work (the pages' writing was the guest's time).
    channel.extend_deadline(std::chrono::microseconds(micros_since(sealing)));
  }
  direct.raw_bytes = span->used_bytes;
  direct.image_us = micros_since(t0);
  return std::nullopt;
}

std::optional<Error> give_resume_pages(HostChannel& channel, DirectPages& direct, ChannelStatus& status) {
  image::ImageOpener& opener = *direct.resume;
  direct.resume = nullptr;  // once per resume
  direct.mark("guest_ready");
  const auto t0 = Clock::now();
  const std::uint64_t kept = opener.kept_bytes();
  bool by_channel = !direct.enabled || direct.pid <= 0;
  bool header_sent = false;
  const auto send_header = [&](std::uint64_t length) {
    header_sent = true;
    status = channel.write(channel::frame_header(channel::Kind::heap_pages, static_cast<std::uint32_t>(length)));
    return status == ChannelStatus::ok;
  };
  if (kept > channel::kMaxGuestFrameBytes) {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: no room for its " +
                                                 std::to_string(kept / kPage) + " kept pages");
  }
  GuestArenaPages pages(direct.pid, direct.pidfd, opener.header().arena_base, opener.page_map());
  // One piece at a time through a buffer that stays in the cache: decompressed, then into the
  // guest's arena (or its channel).
  // (reused across threads and images, see scratch.hpp: a fresh one would be faulted in each time)
  const image::Scratch bounce(static_cast<std::size_t>(std::min<std::uint64_t>(image::kReadPiece, kept)));
  const std::span<std::uint8_t> piece = bounce.bytes();
  for (std::uint64_t at = 0; at < kept;) {
    const std::span<std::uint8_t> bytes(piece.data(), static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), kept - at)));
    if (Result<void> next = opener.next(bytes); !next) return next.error();
    if (!by_channel) {
      const GuestArenaPages::Outcome put = pages.write(bytes);
      if (put == GuestArenaPages::Outcome::failed || (put == GuestArenaPages::Outcome::refused && at != 0)) {
        return crashed(std::string("its arena could not be written (") + std::strerror(pages.last_errno()) + ")");
      }
      by_channel = put == GuestArenaPages::Outcome::refused;
    }
    if (by_channel) {
      if (!header_sent && !send_header(kept)) return std::nullopt;
      status = channel.write(bytes);
      if (status != ChannelStatus::ok) return std::nullopt;
    }
    at += bytes.size();
  }
  if (Result<void> end = opener.finish(); !end) return end.error();
  // Direct: an empty heap_pages says the pages are in place.
  if (!header_sent && !send_header(by_channel ? kept : 0)) return std::nullopt;
  ++(by_channel ? direct.by_channel : direct.direct);
  direct.restore_us = micros_since(t0);
  direct.mark("pages_in");
  channel.extend_deadline(std::chrono::microseconds(direct.restore_us));  // the host's work, not the guest's
  return std::nullopt;
}

}  // namespace sojourn::sandbox
