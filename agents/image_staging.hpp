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
#include <span>
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

  // At most this many pieces of one image are held ahead of a missing one (kParkedPieces).
  static constexpr std::size_t kParkedPieces = 8;

  // Keeps one piece. The first (offset 0) must hold the image's header, whose declared sizes
  // are checked against the memory limit before a byte is kept (sandbox_refused "refused by
  // the sandbox: heap image declares ..."); it restarts an image already begun for the same
  // (id, epoch) (a retried hand-over). Later pieces may come out of order (a sender keeps a
  // few in flight, and a node serves them on several workers): each must be the size of the
  // first (the last may be shorter), start at a multiple of it, inside the declared total,
  // and not be one already held; one that lands after a missing piece is held aside (at most
  // kParkedPieces, each within the image's own reservation) until the gap is filled. Anything
  // else is refused (invalid_argument) and keeps nothing. The image is hashed as its bytes
  // land in order (image::DigestStream): its TRANSFER's check needs no second pass.
  Result<void> add(ImagePart part);
  // The whole image staged for (id, epoch) under this hash, moved out; nothing when there is
  // none or it is incomplete. `sealed_digest_checked`, when given, says whether the bytes
  // were found, as they landed, to hash to `sha256` in the image's own form (what
  // image::has_sealed_digest answers, without its pass); false says nothing either way.
  std::optional<std::vector<std::uint8_t>> take(const std::string& id, std::uint64_t epoch, const std::string& sha256,
                                                bool* sealed_digest_checked = nullptr);
  std::uint64_t staged_bytes();

 private:
  struct Staged {
    std::string sha256;
    std::uint64_t total = 0;
    std::uint64_t piece = 0;  // the first piece's size: every other starts at a multiple of it
    std::vector<std::uint8_t> bytes;  // the pieces in order so far
    std::map<std::uint64_t, std::vector<std::uint8_t>> parked;  // offset -> a piece ahead of a gap
    sandbox::image::DigestStream digest;  // over `bytes`, as they land
    std::chrono::steady_clock::time_point expires;
  };
  // Appends a piece's bytes in order (the one copy from the message), hashing them.
  static void append(Staged& staged, std::span<const std::uint8_t> bytes);
  void prune_locked(std::chrono::steady_clock::time_point now);
  Bounds bounds_;
  std::mutex mutex_;
  std::map<std::pair<std::string, std::uint64_t>, Staged> staged_;
  std::uint64_t reserved_ = 0;  // the totals of the images staged
};

}  // namespace sojourn
