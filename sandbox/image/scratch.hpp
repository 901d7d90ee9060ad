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

}  // namespace sojourn::sandbox::image
