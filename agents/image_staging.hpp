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
#include <set>
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

  // At most this many pieces of one image may land ahead of a missing one.
  static constexpr std::size_t kPiecesAhead = 8;

  // Keeps one piece. The first (offset 0) must hold the image's header, whose declared sizes
  // are checked against the memory limit before a byte is kept (sandbox_refused "refused by
  // the sandbox: heap image declares ..."); it restarts an image already begun for the same
  // (id, epoch) (a retried hand-over). Later pieces may come out of order (a sender keeps a
  // few in flight, and a node serves them on several workers): each must be the size of the
  // first (the last may be shorter) and start at a multiple of it, inside the declared total;
  // each is copied straight to its place, at most kPiecesAhead beyond a missing one. Anything
  // else is refused (invalid_argument) and keeps nothing; a piece that landed already is taken
  // as it was (a late copy from an earlier try). The image is hashed as its bytes come to
  // follow in order (image::DigestStream): its TRANSFER's check needs no second pass.
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
    std::vector<std::uint8_t> bytes;  // `total` bytes: each piece is copied to its place
    std::uint64_t filled = 0;  // the bytes from the start whose pieces all landed (and are hashed)
    std::set<std::uint64_t> ahead;  // offsets of the pieces landed beyond `filled`
    sandbox::image::DigestStream digest;  // over bytes[0, filled)
    std::chrono::steady_clock::time_point expires;
  };
  void prune_locked(std::chrono::steady_clock::time_point now);
  Bounds bounds_;
  std::mutex mutex_;
  std::map<std::pair<std::string, std::uint64_t>, Staged> staged_;
  std::uint64_t reserved_ = 0;  // the totals of the images staged
};

}  // namespace sojourn
