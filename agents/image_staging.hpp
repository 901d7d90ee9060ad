// Heap images that arrive in pieces (agent.image_part) ahead of their TRANSFER: a strong
// agent's image larger than one frame is assembled here, once, and handed to the TRANSFER
// that names it, so a node never holds it in more than one buffer (docs/migration.md,
// "Images larger than a frame").
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agents/agent_messages.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sojourn/core/error.hpp"

namespace sojourn {

class ImageStaging {
 public:
  struct Bounds {
    std::uint64_t max_memory_bytes = 0;  // the largest memory limit any run here gets
    std::uint64_t max_staged_bytes = 0;  // all images in transit here together
    std::chrono::milliseconds lifetime{60'000};  // an image its TRANSFER never claimed is dropped
  };
  explicit ImageStaging(Bounds bounds) : bounds_(bounds) {}

  // Keeps one piece. The first (offset 0) must hold the image's header, whose declared sizes
  // are checked against the memory limit before a byte is kept (sandbox_refused "refused by
  // the sandbox: heap image declares ..."); it restarts an image already begun for the same
  // (id, epoch) (a retried hand-over). Later pieces may arrive in any order once the first was
  // kept (a source keeps several in flight, and a node serves requests on several threads),
  // each at its own place; one with no first piece before it, or of another image, is refused
  // (invalid_argument) and one overlapping a piece already kept drops the whole image
  // (invalid_argument): nothing of it is left behind. The image is hashed as its bytes become
  // contiguous from its start, so its TRANSFER does not hash it again.
  Result<void> add(ImagePart part);
  struct Taken {
    std::vector<std::uint8_t> bytes;
    std::string sha256;  // what the bytes hash to (hex), computed here as they arrived
  };
  // The whole image staged for (id, epoch) under this hash, moved out with the hash of what
  // arrived (which the caller compares with the one its record names); nothing when there is
  // none or it is incomplete.
  std::optional<Taken> take(const std::string& id, std::uint64_t epoch, const std::string& sha256);
  std::uint64_t staged_bytes();

 private:
  struct Staged {
    std::string sha256;
    std::uint64_t total = 0;
    std::vector<std::uint8_t> bytes;  // total bytes, each piece written at its offset
    std::uint64_t received = 0;       // bytes of the pieces kept
    std::uint64_t hashed = 0;         // the prefix fed to `digest`
    std::map<std::uint64_t, std::uint64_t> ahead;  // pieces past the hashed prefix: offset -> size
    sandbox::image::ImageDigest digest;
    std::chrono::steady_clock::time_point expires;
  };
  void prune_locked(std::chrono::steady_clock::time_point now);
  Bounds bounds_;
  std::mutex mutex_;
  std::map<std::pair<std::string, std::uint64_t>, Staged> staged_;
  std::uint64_t reserved_ = 0;  // the totals of the images staged
};

}  // namespace sojourn
