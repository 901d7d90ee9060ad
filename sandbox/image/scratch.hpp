// Scratch buffers of the host's image paths (sealing, opening into a guest): taken from one
// process-wide list and given back, instead of one per thread. A buffer's pages are faulted in
// when it is first written and then reused by whichever thread seals or restores next: a node
// with N worker threads pays those faults once per image in flight, not once per thread (each
// of which would also have zero-filled its own copy first, a megabyte or more at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace sojourn::sandbox::image {

class Scratch {
 public:
  // At least `bytes` bytes, uninitialised (never zero-filled).
  explicit Scratch(std::size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  std::span<std::uint8_t> bytes() const { return {data_.get(), size_}; }

  // Buffers waiting in the list (tests).
  static std::size_t idle();

 private:
  std::unique_ptr<std::uint8_t[]> data_;
  std::size_t size_ = 0;  // what was asked for; the buffer may be larger
  std::size_t capacity_ = 0;
};

// The buffer of a large image held whole (one staged as its pieces arrive, or sealed at a
// strong stop, kept by its record while the agent stays): when its last holder lets go, the
// buffer is kept, its pages still mapped and faulted in, for the next such image, staged or
// sealed (a 64 MB image in a fresh buffer costs the kernel 64 MB of page zeroing as it is
// filled). One buffer at most, of 4 MB or more, dropped
// once it has waited past kImageBufferIdleMs: by the next take or give, or by
// drop_idle_image_buffer (a node's periodic sweep), so an idle node does not hold it.
inline constexpr std::size_t kImageBufferMin = std::size_t{4} << 20;
inline constexpr long long kImageBufferIdleMs = 30'000;
// Two more are kept the same way for mid-sized images (kSmallImageBufferMin to just under
// kImageBufferMin: a 1 MB heap's, one sealed and one staged): a fresh ~1 MB buffer is often
// memory the allocator had given back, each of whose pages the kernel zeroes again as the image
// is appended. They never take the large one's place, nor the large one theirs. Smaller images
// get fresh buffers.
inline constexpr std::size_t kSmallImageBufferMin = std::size_t{256} << 10;
// A vector with room for `bytes`: the kept buffer of its class when it is large enough, else a
// new empty one (not reserved). A kept buffer is handed out as it was let go, its size and bytes those of
// the image it held (so that resizing it costs no fill): its caller overwrites every byte it
// will read.
std::vector<std::uint8_t> take_image_buffer(std::size_t bytes);
// Gives a buffer back (kept when large enough; the one kept before goes).
void give_image_buffer(std::vector<std::uint8_t> buffer);
// The image `bytes`, shared: its buffer is given back when the last holder lets go.
std::shared_ptr<const std::vector<std::uint8_t>> shared_image(std::vector<std::uint8_t> bytes);
// Frees the kept buffers that have waited past kImageBufferIdleMs.
void drop_idle_image_buffer();
// The capacity of the large buffer kept, 0 for none (tests).
std::size_t kept_image_buffer();
// The capacity of the largest mid-sized buffer kept, 0 for none (tests).
std::size_t kept_small_image_buffer();

}  // namespace sojourn::sandbox::image
