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
  // (id, epoch) (a retried hand-over). Later pieces must follow in order (invalid_argument).
  Result<void> add(ImagePart part);
  // The whole image staged for (id, epoch) under this hash, moved out; nothing when there is
  // none or it is incomplete.
  std::optional<std::vector<std::uint8_t>> take(const std::string& id, std::uint64_t epoch, const std::string& sha256);
  std::uint64_t staged_bytes();

 private:
  struct Staged {
    std::string sha256;
    std::uint64_t total = 0;
    std::vector<std::uint8_t> bytes;
    std::chrono::steady_clock::time_point expires;
  };
  void prune_locked(std::chrono::steady_clock::time_point now);
  Bounds bounds_;
  std::mutex mutex_;
  std::map<std::pair<std::string, std::uint64_t>, Staged> staged_;
  std::uint64_t reserved_ = 0;  // the totals of the images staged
};

}  // namespace sojourn
