// A strong step inside the guest: its stop writes the arena's kept pages to the host (or
// leaves them to the host to read), its resume reads an image's pages back into a fresh arena.
#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#include "sandbox/guest/arena.hpp"
#include "sandbox/guest/guest_serve.hpp"
#include "sandbox/guest/guest_serve_internal.hpp"
#include "sandbox/lua/lua_strong.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox::guest {

namespace {

using channel::Kind;
using serve_internal::input_of;
using serve_internal::read_exact;

// The installed arena, which strong steps image and restore.
FixedArena* guest_arena() { return dynamic_cast<FixedArena*>(installed_lua_heap()); }

constexpr std::size_t kPage = 4096;

bool page_is_zero(const std::uint8_t* page) {
  // Zero when its first word is and it equals itself shifted by one word.
  std::uint64_t first;
  std::memcpy(&first, page, sizeof first);
  return first == 0 && std::memcmp(page, page + sizeof first, kPage - sizeof first) == 0;
}

bool page_kept(std::string_view map, std::size_t i) {
  return ((static_cast<std::uint8_t>(map[i / 8]) >> (i % 8)) & 1u) != 0;
}

// Calls run(first_page, page_count) for each run of kept pages, in order, until one fails.
template <class F>
bool for_each_run(std::string_view map, std::size_t pages, F&& run) {
  for (std::size_t i = 0; i < pages;) {
    if (!page_kept(map, i)) {
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    while (j < pages && page_kept(map, j)) ++j;
    if (!run(i, j - i)) return false;
    i = j;
  }
  return true;
}

// After a heap_span of the map alone: pages_taken, or pages_wanted and the pages by the channel.
bool await_pages_taken(int fd, const std::uint8_t* base, std::string_view map, std::size_t pages);


}  // namespace

namespace serve_internal {

// A strong stop: the arena's used span goes to the host as one heap_span frame, its page map
// then its kept pages written run by run straight from the arena (no copy in the guest's C++
// heap; all-zero pages never leave the guest). Free blocks are zeroed first, so that only live
// data survives the zero-page rule.
// With `direct`, the frame carries the map alone and the host reads the pages out of the arena
// itself (process_vm_readv) while this guest waits, untouched, for its word (await_pages_taken).
strong::StopSink span_writer(int fd, bool direct) {
  return [fd, direct](std::uintptr_t handle) -> Result<void> {
    FixedArena* arena = guest_arena();
    if (arena == nullptr) return errors::internal("a strong step needs the guest's arena");
    // Freed memory travels as zero pages, which the image leaves out (the collection before
    // the stop freed the garbage; merging free blocks may also lower the top).
    arena->clear_free_pages();
    const std::size_t used = (arena->high_water() + kPage - 1) & ~(kPage - 1);
    const std::size_t pages = used / kPage;
    // SAFETY: [base, base + used) lies inside the mapped arena (used <= its top, page-rounded
    // within its size).
    const auto* base = reinterpret_cast<const std::uint8_t*>(arena->base());
    std::string map((pages + 7) / 8, '\0');
    std::size_t kept = 0;
    for (std::size_t i = 0; i < pages; ++i) {
      // A free page the arena knows zero is not read (in a restored arena, reading it would
      // fault it in).
      if (!arena->known_zero(i) && !page_is_zero(base + i * kPage)) {
        map[i / 8] = static_cast<char>(static_cast<std::uint8_t>(map[i / 8]) | (1u << (i % 8)));
        ++kept;
      }
    }
    if (kept * kPage + map.size() > UINT32_MAX - 64) return errors::internal("the arena's span is too large for one frame");
    channel::Encoder e;
    for (std::size_t i = 0; i < channel::kHeaderBytes; ++i) e(std::uint8_t{0});
    e(std::uint64_t{handle}, std::uint64_t{arena->size()}, std::uint64_t{used});
    e(std::string_view(map));
    const std::size_t sent_pages = direct ? 0 : kept * kPage;
    e(static_cast<std::uint32_t>(sent_pages));  // the pages' length; their bytes follow
    std::vector<std::uint8_t>& head = e.bytes();
    const std::size_t payload = head.size() - channel::kHeaderBytes + sent_pages;
    const auto frame = channel::frame_header(channel::Kind::heap_span, static_cast<std::uint32_t>(payload));
    std::copy(frame.begin(), frame.end(), head.begin());
    const bool sent = write_all(fd, head) && (direct ? await_pages_taken(fd, base, map, pages)
                                                     : for_each_run(map, pages, [&](std::size_t first, std::size_t count) {
                                                         return write_all(fd, std::span(base + first * kPage, count * kPage));
                                                       }));
    if (!sent) return errors::internal("the guest's channel to its host broke");
    return {};
  };
}

}  // namespace serve_internal

namespace {

bool await_pages_taken(int fd, const std::uint8_t* base, std::string_view map, std::size_t pages) {
  std::uint8_t header[channel::kHeaderBytes];
  if (!read_exact(fd, header, sizeof header)) return false;
  const channel::FrameHeader answer = channel::parse_header(header);
  if (answer.length != 0) return false;
  if (answer.kind == Kind::pages_taken) return true;
  if (answer.kind != Kind::pages_wanted) return false;
  // The host cannot read this process's memory (a kernel policy): the pages go by the channel.
  std::size_t kept = 0;
  for (char b : map) kept += static_cast<std::size_t>(__builtin_popcount(static_cast<std::uint8_t>(b)));
  const auto frame = channel::frame_header(Kind::heap_pages, static_cast<std::uint32_t>(kept * kPage));
  return write_all(fd, frame) && for_each_run(map, pages, [&](std::size_t first, std::size_t count) {
           return write_all(fd, std::span(base + first * kPage, count * kPage));
         });
}

Error refused_image(const std::string& why) {
  return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: " + why);
}

}  // namespace

namespace serve_internal {

// Reads the kept pages of a checked page map back into a fresh arena at their places, and
// resumes the agent in it.
Result<AgentOutcome> resume_strong(int fd, const channel::ResumeRequest& request, HostCalls* host) {
  FixedArena* arena = guest_arena();
  if (arena == nullptr) return errors::internal("a strong resume needs the guest's arena");
  if (request.arena_bytes != arena->size() || request.used_bytes > arena->size()) {
    return refused_image("its arena of " + std::to_string(request.arena_bytes) + " bytes is not this guest's (" +
                         std::to_string(arena->size()) + " bytes)");
  }
  const std::size_t pages = request.used_bytes / kPage;
  const std::string_view map = request.page_map;
  if (request.used_bytes % kPage != 0 || map.size() != (pages + 7) / 8 ||
      (pages % 8 != 0 && (static_cast<std::uint8_t>(map.back()) >> (pages % 8)) != 0)) {
    return refused_image("its page map does not cover its span of " + std::to_string(request.used_bytes) + " bytes");
  }
  std::size_t kept = 0;
  for (char b : map) kept += static_cast<std::size_t>(__builtin_popcount(static_cast<std::uint8_t>(b)));
  // SAFETY: [base, base + peak) and every kept page lie inside the mapped arena (used_bytes
  // and the peak are at most its size). A fresh arena holds only its bookkeeping, which the
  // image's own replaces: cleared, every page the map leaves out reads as zero.
  auto* base = reinterpret_cast<std::uint8_t*>(arena->base());
  std::memset(base, 0, arena->peak());
  // Direct: the host writes the kept pages into the cleared arena itself, then sends an empty
  // heap_pages (or, when the kernel refuses it that, the pages as usual).
  const std::array<std::uint8_t, channel::kHeaderBytes> ready = channel::frame_header(Kind::heap_ready, 0);
  if (request.pages_direct && !write_all(fd, ready)) return errors::internal("the guest's channel to its host broke");
  std::uint8_t header[channel::kHeaderBytes];
  if (!read_exact(fd, header, sizeof header)) return errors::internal("the guest's channel to its host broke");
  const channel::FrameHeader pages_frame = channel::parse_header(header);
  const bool written = request.pages_direct && pages_frame.kind == Kind::heap_pages && pages_frame.length == 0;
  if (!written && (pages_frame.kind != Kind::heap_pages || pages_frame.length != kept * kPage)) {
    return refused_image("its page map keeps " + std::to_string(kept) + " pages, the host sent " +
                         std::to_string(pages_frame.length) + " bytes of " + std::string(channel::kind_name(pages_frame.kind)));
  }
  const bool read = written || for_each_run(map, pages, [&](std::size_t first, std::size_t count) {
    return read_exact(fd, base + first * kPage, count * kPage);
  });
  if (!read) return errors::internal("the guest's channel to its host broke");
  if (Result<FixedArena> adopted = FixedArena::adopt(reinterpret_cast<void*>(arena->base()), arena->size()); !adopted) {
    return adopted.error();
  }
  // The pages the map leaves out are zero (cleared above, never written): the next stop need
  // not write or read them while they stay so.
  arena->track_zero_pages(std::span(reinterpret_cast<const std::uint8_t*>(map.data()), map.size()), pages);
  RunInput input = input_of(request.run);
  return strong::resume_agent_strong(request.agent_handle, input, request.info, host,
                                     span_writer(fd, request.pages_direct));
}

}  // namespace serve_internal

}  // namespace sojourn::sandbox::guest
