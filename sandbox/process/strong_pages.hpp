// A strong step's kept pages moved between the host and a stopped or waiting guest through the
// guest's memory (process_vm_readv / process_vm_writev, made by the host; the guest makes no
// syscall for it), with the channel as the fallback when the kernel refuses the host that.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "sandbox/image/heap_image.hpp"
#include "sandbox/process/host_channel.hpp"

namespace sojourn::sandbox {

// What a strong step's session does with pages, and what it did.
struct DirectPages {
  bool enabled = true;  // false: always by the channel (ProcessJailOptions::direct_pages)
  int pid = 0;          // the guest's (set by run_in_guest; 0: no process to read, the channel)
  int pidfd = -1;       // and its pidfd: the pid is used only while that says it was not reaped
  image::ImageSource source;              // a stop's image: build and arena (the handle comes from the span)
  image::ImageOpener* resume = nullptr;   // a resume's checked image, whose kept pages the guest waits for
  // Set by a session that wants the step's CPU time: reads the guest's CPU clock once the guest
  // is off its CPU. Called at a stop while the guest waits for its pages_taken (or
  // pages_wanted) word, so that the step's reading need not wait for the guest's exit.
  std::function<std::optional<std::uint64_t>()> parked_clock;
  // What happened.
  std::optional<std::vector<std::uint8_t>> image;  // a stop, sealed
  std::uint64_t raw_bytes = 0;   // its span
  std::uint64_t image_us = 0;    // its sealing
  std::uint64_t restore_us = 0;  // a resume's pages decompressed into the guest
  std::optional<std::uint64_t> parked_cpu_us;  // parked_clock's reading at a stop
  int direct = 0;                // transfers made through the guest's memory
  int by_channel = 0;            // transfers made through the channel (refused, or disabled)
  // Moments of the step for the trace (StrongOutcome::marks), stamped as they happen.
  std::vector<std::pair<const char*, std::chrono::steady_clock::time_point>> marks;
  void mark(const char* kind) { marks.emplace_back(kind, std::chrono::steady_clock::now()); }
};

// The kept pages of a page map over an arena at `base` in process `pid`, a piece at a time in
// the map's order.
class GuestArenaPages {
 public:
  GuestArenaPages(int pid, int pidfd, std::uint64_t base, std::span<const std::uint8_t> page_map);
  // refused: the kernel does not let the host do it (EPERM, EACCES, ENOSYS): use the channel.
  enum class Outcome { ok, refused, failed };
  // The next bytes of kept pages (a whole number of pages), read from or written to the guest.
  Outcome read(std::span<std::uint8_t> into);
  Outcome write(std::span<const std::uint8_t> from);
  int last_errno() const { return errno_; }

 private:
  Outcome move(void* local, std::size_t bytes, bool to_guest);
  int pid_;
  int pidfd_;
  std::uint64_t base_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs_;  // (first page, pages)
  std::size_t run_ = 0;
  std::uint64_t into_run_ = 0;  // pages of runs_[run_] already moved
  int errno_ = 0;
};

// A strong stop's heap_span frame (its payload in `payload`) when the guest was offered direct
// pages: seals the image (in `direct`) from the guest's arena, or from the heap_pages frame it
// sends when the host cannot read it, and tells the guest to go on. An error ends the run
// (guest_crashed for a span that does not fit, the channel's status otherwise in `status`).
std::optional<Error> take_stop_pages(HostChannel& channel, std::span<const std::uint8_t> payload, DirectPages& direct,
                                     const ReadLimits& limits, ChannelStatus& status);
// A resume's heap_ready: decompresses the checked image's kept pages into the guest's arena, or
// sends them as a heap_pages frame when the host cannot write it. A refusal (an image that does
// not decompress) ends the run: the guest, which may hold some of its pages, is killed.
std::optional<Error> give_resume_pages(HostChannel& channel, DirectPages& direct, ChannelStatus& status);

}  // namespace sojourn::sandbox
