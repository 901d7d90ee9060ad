// Assembling heap images sent in pieces (image_staging.hpp). The declared sizes in an image's
// header bound what is kept for it; the hash and every other check come at its TRANSFER and
// again when a jail opens it.
#include "agents/image_staging.hpp"

#include <span>

#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/image/scratch.hpp"
#include "sojourn/core/bundle.hpp"

namespace sojourn {

namespace {

namespace image = sandbox::image;

Error refused(const std::string& why) { return make_error(Errc::sandbox_refused, "refused by the sandbox: " + why); }

// The most a sealed image of `payload` bytes can take, whatever its codec: zstd's worst case (a
// stored frame a little larger than its input; LZ4's, 4 bytes per 64 KB block and its frame
// header, is smaller, a stored payload is exact) and the header.
std::uint64_t sealed_bound(std::uint64_t payload) { return image::kHeaderBytes + payload + payload / 128 + (128u << 10); }

}  // namespace

void ImageStaging::prune_locked(std::chrono::steady_clock::time_point now) {
  for (auto it = staged_.begin(); it != staged_.end();) {
    if (it->second.expires <= now) {
      reserved_ -= it->second.total;
      it = staged_.erase(it);
    } else {
      ++it;
    }
  }
}

Result<void> ImageStaging::add(ImagePart part) {
  if (!is_agent_id(part.id) || !is_lower_hex(part.image_sha256, 64)) return errors::invalid_argument("bad image part");
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  prune_locked(now);
  const auto key = std::make_pair(part.id, part.epoch);
  auto it = staged_.find(key);
  if (part.offset == 0) {
    if (it != staged_.end()) {  // a retried hand-over starts over, in the buffer it had
      reserved_ -= it->second.total;
      image::give_image_buffer(std::move(it->second.bytes));
      staged_.erase(it);
    }
    if (part.bytes.size() < image::kHeaderBytes) return refused("heap image: its first piece is shorter than its header");
    auto header = image::peek_header(part.bytes);
    if (!header) return header.error();
    const std::uint64_t max_arena = sandbox::guest::arena_bytes_for_quota(bounds_.max_memory_bytes);
    if (header->arena_bytes > max_arena) {
      return refused("heap image declares an arena of " + std::to_string(header->arena_bytes) +
                     " bytes, above the memory quota's " + std::to_string(max_arena) + " bytes");
    }
    const std::uint64_t pages = header->used_bytes / image::kPageBytes;
    if (header->used_bytes > header->arena_bytes || header->payload_bytes > (pages + 7) / 8 + header->used_bytes) {
      return refused("heap image declares a payload of " + std::to_string(header->payload_bytes) +
                     " bytes for a span of " + std::to_string(header->used_bytes));
    }
    if (part.total_bytes > sealed_bound(header->payload_bytes)) {
      return refused("heap image of " + std::to_string(part.total_bytes) + " bytes is larger than its payload of " +
                     std::to_string(header->payload_bytes) + " bytes can seal to");
    }
    if (part.total_bytes > bounds_.max_staged_bytes - std::min(bounds_.max_staged_bytes, reserved_)) {
      return refused("heap images in transit here would pass " + std::to_string(bounds_.max_staged_bytes) +
                     " bytes; try again later");
    }
    Staged fresh;
    fresh.sha256 = part.image_sha256;
    fresh.total = part.total_bytes;
    // The buffer of an image let go before when there is one (its pages already faulted in:
    // no zeroing of fresh pages inside the pieces' answers), else a fresh one.
    // A kept buffer holds an earlier image's bytes: every one is overwritten by a piece before
    // take() hands the image out (it must be whole), so none of them is ever read.
    fresh.bytes = image::take_image_buffer(part.total_bytes);
    if (fresh.bytes.capacity() < part.total_bytes) {
      fresh.bytes.reserve(part.total_bytes);
      image::advise_huge_pages(fresh.bytes.data(), fresh.bytes.capacity());
      image::prefault(fresh.bytes.data(), part.total_bytes);  // one call, not a fault a page
    }
    fresh.bytes.resize(part.total_bytes);  // pieces land in any order: each at its place
    fresh.expires = now + bounds_.lifetime;
    reserved_ += fresh.total;
    fresh.piece = part.bytes.size();
    it = staged_.emplace(key, std::move(fresh)).first;
  } else if (it == staged_.end() || it->second.sha256 != part.image_sha256 || it->second.total != part.total_bytes) {
    return errors::invalid_argument("image part at offset " + std::to_string(part.offset) + " of agent " + part.id +
                                    " follows no piece before it");
  }
  Staged& staged = it->second;
  if (part.offset != 0) {
    // part.bytes ends inside the declared total (decode_image_part checked it). Pieces of the
    // first's size at its multiples cannot overlap.
    const bool last = part.offset + part.bytes.size() == staged.total;
    if (part.bytes.empty() || part.offset % staged.piece != 0 || (part.bytes.size() != staged.piece && !last) ||
        part.bytes.size() > staged.piece) {
      return errors::invalid_argument("image part at offset " + std::to_string(part.offset) + " of agent " + part.id +
                                      " is not one of its image's pieces");
    }
    // A piece that landed already (a late copy from an earlier try of the same hand-over): the
    // first stands. Whatever its bytes, the hash at the TRANSFER covers what is kept.
    if (part.offset < staged.filled || staged.ahead.count(part.offset) != 0) return {};
    if (part.offset != staged.filled && staged.ahead.size() >= kPiecesAhead) {
      return errors::invalid_argument("image part at offset " + std::to_string(part.offset) + " of agent " + part.id +
                                      " is too far ahead of the pieces received");
    }
  }
  // The one copy of the piece on this node's side of the call: from the message, straight to
  // its place.
  std::copy(part.bytes.begin(), part.bytes.end(), staged.bytes.begin() + static_cast<std::ptrdiff_t>(part.offset));
  staged.ahead.insert(part.offset);
  // Every piece that now follows in order is hashed (this one while it is warm in the cache).
  for (auto next = staged.ahead.find(staged.filled); next != staged.ahead.end(); next = staged.ahead.find(staged.filled)) {
    const std::uint64_t n = std::min<std::uint64_t>(staged.piece, staged.total - staged.filled);
    staged.digest.update(std::span<const std::uint8_t>(staged.bytes).subspan(staged.filled, n));
    staged.filled += n;
    staged.ahead.erase(next);
  }
  return {};
}

std::optional<std::vector<std::uint8_t>> ImageStaging::take(const std::string& id, std::uint64_t epoch,
                                                            const std::string& sha256, bool* sealed_digest_checked) {
  if (sealed_digest_checked != nullptr) *sealed_digest_checked = false;
  std::lock_guard lock(mutex_);
  auto it = staged_.find({id, epoch});
  if (it == staged_.end() || it->second.sha256 != sha256 || it->second.filled != it->second.total) return std::nullopt;
  // Every byte was hashed as it landed, and none has changed since (held here, under the lock).
  const bool checked = it->second.digest.sealed_as(it->second.bytes, sha256);
  if (sealed_digest_checked != nullptr) *sealed_digest_checked = checked;
  std::vector<std::uint8_t> bytes = std::move(it->second.bytes);
  reserved_ -= it->second.total;
  staged_.erase(it);
  return bytes;
}

std::uint64_t ImageStaging::staged_bytes() {
  std::lock_guard lock(mutex_);
  return reserved_;
}

}  // namespace sojourn
