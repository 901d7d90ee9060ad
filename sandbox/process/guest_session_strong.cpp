// The host side of strong steps: a resume's request (the heap image opened straight into its
// frames) and a step's outcome with the image its stop was sealed into.
#include <chrono>
#include <string>

#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/process/guest_session.hpp"

namespace sojourn::sandbox {

namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

Result<std::vector<std::uint8_t>> strong_resume_request(std::span<const std::uint8_t> bytes, const RunInput& input,
                                                        const Value& info, const HostCalls* host,
                                                        const std::string& guest_path, std::uint64_t* restore_us) {
  Result<std::array<std::uint8_t, 32>> build = image::guest_build_id(guest_path);
  if (!build) return build.error();
  const std::size_t arena_bytes = guest::arena_bytes_for_quota(input.limits.memory_bytes);
  const auto t0 = Clock::now();
  // Two frames in one buffer: the resume request with the page map, then heap_pages, whose
  // kept pages the image decompresses straight into (no other copy of them on the host).
  std::vector<std::uint8_t> frame;
  Result<image::ImageHeader> opened = image::open_image_into(
      bytes, {*build, guest::kArenaBase, arena_bytes},
      [&](const image::ImageHeader& header, std::span<const std::uint8_t> page_map) {
        const std::uint64_t pages_bytes = image::kept_pages(page_map) * image::kPageBytes;
        // Pages past what one frame can say are refused by open_image_into (no destination).
        if (pages_bytes > channel::kMaxGuestFrameBytes) return std::span<std::uint8_t>{};
        channel::ResumeRequest request{make_run_request(input, host), info, header.agent_handle, header.arena_bytes,
                                       header.used_bytes, std::string(page_map.begin(), page_map.end())};
        frame = channel::encode_frame(request);
        const auto pages_header = channel::frame_header(channel::Kind::heap_pages, static_cast<std::uint32_t>(pages_bytes));
        frame.insert(frame.end(), pages_header.begin(), pages_header.end());
        const std::size_t at = frame.size();
        frame.resize(at + pages_bytes);
        return std::span<std::uint8_t>(frame).subspan(at);
      });
  if (!opened) return opened.error();
  if (opened->arena_bytes != arena_bytes) {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: its arena of " +
                                                 std::to_string(opened->arena_bytes) +
                                                 " bytes needs the memory limit it was taken under (this step's gives " +
                                                 std::to_string(arena_bytes) + " bytes)");
  }
  if (restore_us != nullptr) {
    *restore_us = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
  }
  return frame;
}

Result<StrongOutcome> strong_outcome(std::span<const std::uint8_t> done, std::span<const std::uint8_t> span_frame,
                                     const std::array<std::uint8_t, 32>& build, std::size_t arena_bytes,
                                     ImageCodec codec) {
  Result<AgentOutcome> outcome = agent_outcome(done);
  if (!outcome) return outcome.error();
  StrongOutcome strong;
  if (outcome->strong_stop) {
    Result<channel::HeapSpan> span = channel::decode_payload<channel::HeapSpan>(span_frame);
    if (!span) return make_error(Errc::guest_crashed, "guest crashed: a strong stop without its heap span (" + span.error().message + ")");
    if (span->arena_bytes != arena_bytes || span->used_bytes > arena_bytes || span->agent_handle < guest::kArenaBase ||
        span->agent_handle >= guest::kArenaBase + span->used_bytes) {
      return make_error(Errc::guest_crashed, "guest crashed: its heap span does not fit its arena");
    }
    const auto bytes_of = [](std::string_view v) { return std::span(reinterpret_cast<const std::uint8_t*>(v.data()), v.size()); };
    const auto t0 = Clock::now();
    // take_image checks the page map against the span and the pages (invalid_argument).
    Result<std::vector<std::uint8_t>> sealed =
        image::take_image({build, guest::kArenaBase, arena_bytes, span->agent_handle, codec},
                          image::KeptPages{span->used_bytes, bytes_of(span->page_map), bytes_of(span->pages)});
    if (!sealed && sealed.error().code == Errc::invalid_argument) {
      return make_error(Errc::guest_crashed, "guest crashed: its heap span does not fit its arena (" + sealed.error().message + ")");
    }
    if (!sealed) return sealed.error();
    strong.image_us =
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
    strong.raw_bytes = span->used_bytes;
    strong.image = std::move(*sealed);
  }
  strong.step = std::move(*outcome);
  return strong;
}

Result<StrongOutcome> strong_outcome(std::span<const std::uint8_t> done, DirectPages& direct) {
  Result<AgentOutcome> outcome = agent_outcome(done);
  if (!outcome) return outcome.error();
  StrongOutcome strong;
  if (outcome->strong_stop) {
    if (!direct.image) return make_error(Errc::guest_crashed, "guest crashed: a strong stop without its heap span");
    strong.image = std::move(*direct.image);
    strong.image_us = direct.image_us;
    strong.raw_bytes = direct.raw_bytes;
  }
  strong.marks = std::move(direct.marks);
  strong.step = std::move(*outcome);
  return strong;
}

}  // namespace sojourn::sandbox
