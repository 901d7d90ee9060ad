// The heap image's encoding and checks (heap_image.hpp). Layout, little-endian:
//   "SJHEAPIM" u32 version, guest_build[32], u64 arena_base, arena_bytes, used_bytes,
//   agent_handle, payload_bytes, hash[32], then one zstd frame of the payload:
//   page map (one bit per page of the used span, 1 = kept) followed by the kept pages in order.
#include "sandbox/image/heap_image.hpp"

#include <openssl/evp.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>

namespace sojourn::sandbox::image {

namespace {

constexpr char kMagic[8] = {'S', 'J', 'H', 'E', 'A', 'P', 'I', 'M'};
constexpr std::size_t kHashAt = kHeaderBytes - 32;
// Fast levels: imaging sits on the agent's path between two nodes.
constexpr int kZstdLevel = 1;
// Compressed output is hashed in pieces of this size, each right after zstd wrote it.
constexpr std::size_t kHashPiece = 256 * 1024;

using Hash = std::array<std::uint8_t, 32>;

Error refused(std::string_view why) { return make_error(Errc::sandbox_refused, "refused by the sandbox: " + std::string(why)); }

void put(std::vector<std::uint8_t>& out, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint64_t get(std::span<const std::uint8_t> in, std::size_t at, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= std::uint64_t{in[at + static_cast<std::size_t>(i)]} << (8 * i);
  return v;
}

// SHA-256 fed piece by piece. A failure anywhere gives an all-zero hash, which never matches a
// real one: the image is refused, not trusted.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    ok_ = ctx_ && EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1;
  }
  void update(std::span<const std::uint8_t> bytes) {
    ok_ = ok_ && EVP_DigestUpdate(ctx_.get(), bytes.data(), bytes.size()) == 1;
  }
  Hash finish() {
    Hash out{};
    unsigned int n = 0;
    if (!ok_ || EVP_DigestFinal_ex(ctx_.get(), out.data(), &n) != 1) out.fill(0);
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
  bool ok_ = false;
};

// SHA-256 of two spans in sequence.
Hash sha256(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) {
  Sha256 h;
  h.update(a);
  h.update(b);
  return h.finish();
}

Hash hash_of(std::span<const std::uint8_t> image) {
  return sha256(image.first(kHashAt), image.subspan(kHeaderBytes));
}

bool all_zero(const std::uint8_t* page) {
  // A page is zero when its first word is and it equals itself shifted by one word.
  std::uint64_t first;
  std::memcpy(&first, page, sizeof first);
  return first == 0 && std::memcmp(page, page + sizeof first, kPageBytes - sizeof first) == 0;
}

std::string short_id(const Hash& h) { return hex(std::span(h).first(8)); }

}  // namespace

std::string hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

std::size_t page_map_bytes(std::uint64_t used_bytes) {
  return static_cast<std::size_t>((used_bytes / kPageBytes + 7) / 8);
}

std::uint64_t kept_pages(std::span<const std::uint8_t> page_map) {
  std::uint64_t kept = 0;
  for (std::uint8_t b : page_map) kept += static_cast<std::uint64_t>(__builtin_popcount(b));
  return kept;
}

namespace {

// Seals a checked page map and its kept pages, given as pieces in order (one for a guest's
// KeptPages, the runs of kept pages for a whole span: never copied into one buffer).
Result<std::vector<std::uint8_t>> seal(const ImageSource& source, std::uint64_t used_bytes,
                                       std::span<const std::uint8_t> page_map,
                                       std::span<const std::span<const std::uint8_t>> pieces, std::uint64_t kept_count,
                                       ImageStats* stats) {
  const std::size_t payload_bytes = page_map.size() + kept_count * kPageBytes;
  std::vector<std::uint8_t> image(kMagic, kMagic + sizeof kMagic);
  put(image, kFormatVersion, 4);
  image.insert(image.end(), source.guest_build.begin(), source.guest_build.end());
  for (std::uint64_t v : {source.arena_base, source.arena_bytes, used_bytes, source.agent_handle,
                          std::uint64_t{payload_bytes}}) {
    put(image, v, 8);
  }
  // One pass: the page map and the kept pages go into zstd as they are, and each piece of
  // compressed output is hashed as it comes out, while it is still in the cache. The pledged
  // size puts the payload's size in the frame header.
  std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), &ZSTD_freeCCtx);
  if (!cctx || ZSTD_isError(ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, kZstdLevel)) ||
      ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(cctx.get(), payload_bytes))) {
    return errors::internal("zstd: cannot set up a compression context");
  }
  Sha256 hash;
  hash.update(std::span<const std::uint8_t>(image).first(kHashAt));
  // zstd writes each piece into a small buffer that stays in the cache, where it is hashed and
  // appended: the image's bound is reserved but never zero-filled, so only the pages the
  // compressed bytes need are ever touched (a bound's worth of page faults and a memset saved).
  image.reserve(kHeaderBytes + ZSTD_compressBound(payload_bytes));
  image.resize(kHeaderBytes);  // the hash's place, filled in at the end
  std::vector<std::uint8_t> piece(kHashPiece);
  std::size_t failed = 0;
  const auto feed = [&](std::span<const std::uint8_t> bytes, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{bytes.data(), bytes.size(), 0};
    for (;;) {
      ZSTD_outBuffer out{piece.data(), piece.size(), 0};
      const std::size_t left = ZSTD_compressStream2(cctx.get(), &out, &in, mode);
      if (ZSTD_isError(left)) {
        failed = left;
        return false;
      }
      const std::span<const std::uint8_t> written(piece.data(), out.pos);
      hash.update(written);
      image.insert(image.end(), written.begin(), written.end());
      if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) return true;
    }
  };
  bool ok = feed(page_map, ZSTD_e_continue);
  for (std::span<const std::uint8_t> piece : pieces) ok = ok && feed(piece, ZSTD_e_continue);
  ok = ok && feed({}, ZSTD_e_end);
  if (!ok) return errors::internal(std::string("zstd: ") + ZSTD_getErrorName(failed));
  const Hash h = hash.finish();
  std::copy(h.begin(), h.end(), image.begin() + kHashAt);
  if (stats != nullptr) *stats = ImageStats{used_bytes, kept_count, payload_bytes, image.size()};
  return image;
}

}  // namespace

Result<std::vector<std::uint8_t>> take_image(const ImageSource& source, const KeptPages& kept, ImageStats* stats) {
  if (kept.used_bytes % kPageBytes != 0 || kept.used_bytes > source.arena_bytes) {
    return errors::invalid_argument("a heap image covers whole pages of the arena (" + std::to_string(kept.used_bytes) +
                                    " bytes of an arena of " + std::to_string(source.arena_bytes) + ")");
  }
  const std::uint64_t pages = kept.used_bytes / kPageBytes;
  const std::uint64_t kept_count = kept_pages(kept.page_map);
  if (kept.page_map.size() != page_map_bytes(kept.used_bytes) ||
      (pages % 8 != 0 && (kept.page_map.back() >> (pages % 8)) != 0) || kept.pages.size() != kept_count * kPageBytes) {
    return errors::invalid_argument("a heap image's page map of " + std::to_string(kept.page_map.size()) + " bytes keeps " +
                                    std::to_string(kept_count) + " of " + std::to_string(pages) + " pages, with " +
                                    std::to_string(kept.pages.size()) + " bytes of pages");
  }
  const std::span<const std::uint8_t> pieces[] = {kept.pages};
  return seal(source, kept.used_bytes, kept.page_map, pieces, kept_count, stats);
}

Result<std::vector<std::uint8_t>> take_image(const ImageSource& source, std::span<const std::uint8_t> used,
                                             ImageStats* stats) {
  if (used.size() % kPageBytes != 0 || used.size() > source.arena_bytes) {
    return errors::invalid_argument("a heap image covers whole pages of the arena (" + std::to_string(used.size()) +
                                    " bytes of an arena of " + std::to_string(source.arena_bytes) + ")");
  }
  const std::size_t pages = used.size() / kPageBytes;
  std::vector<std::uint8_t> map(page_map_bytes(used.size()));
  std::vector<std::span<const std::uint8_t>> runs;
  std::uint64_t kept = 0;
  for (std::size_t i = 0; i < pages; ++i) {
    const std::uint8_t* page = used.data() + i * kPageBytes;
    if (all_zero(page)) continue;
    map[i / 8] = static_cast<std::uint8_t>(map[i / 8] | (1u << (i % 8)));
    ++kept;
    if (!runs.empty() && runs.back().data() + runs.back().size() == page) {
      runs.back() = std::span(runs.back().data(), runs.back().size() + kPageBytes);
    } else {
      runs.emplace_back(page, kPageBytes);
    }
  }
  return seal(source, used.size(), map, runs, kept, stats);
}

void reseal(std::vector<std::uint8_t>& image) {
  if (image.size() < kHeaderBytes) return;
  const Hash h = hash_of(image);
  std::copy(h.begin(), h.end(), image.begin() + kHashAt);
}

Result<ImageHeader> peek_header(std::span<const std::uint8_t> image) {
  if (image.size() < kHeaderBytes) {
    return refused("heap image: " + std::to_string(image.size()) + " bytes, shorter than its header");
  }
  if (std::memcmp(image.data(), kMagic, sizeof kMagic) != 0) return refused("heap image: not a heap image (bad magic)");
  const auto version = static_cast<std::uint32_t>(get(image, 8, 4));
  if (version != kFormatVersion) {
    return refused("heap image: format version " + std::to_string(version) + " (this node reads " +
                   std::to_string(kFormatVersion) + ")");
  }
  ImageHeader h;
  std::copy_n(image.begin() + 12, 32, h.guest_build.begin());
  h.arena_base = get(image, 44, 8);
  h.arena_bytes = get(image, 52, 8);
  h.used_bytes = get(image, 60, 8);
  h.agent_handle = get(image, 68, 8);
  h.payload_bytes = get(image, 76, 8);
  std::copy_n(image.begin() + kHashAt, 32, h.hash.begin());
  return h;
}

Result<ImageHeader> open_image_into(std::span<const std::uint8_t> image, const RestoreRules& rules, const Placer& place) {
  Result<ImageHeader> header = peek_header(image);
  if (!header) return header.error();
  const ImageHeader& h = *header;
  if (h.guest_build != rules.guest_build) {
    return refused("image from guest build " + short_id(h.guest_build) + ", this node runs " + short_id(rules.guest_build));
  }
  if (h.arena_base != rules.arena_base) {
    char at[64];
    std::snprintf(at, sizeof at, "heap image: arena at 0x%llx, this guest maps it at 0x%llx",
                  static_cast<unsigned long long>(h.arena_base), static_cast<unsigned long long>(rules.arena_base));
    return refused(at);
  }
  // Sizes, before anything is decompressed or allocated.
  if (h.arena_bytes > rules.max_arena_bytes) {
    return refused("heap image declares an arena of " + std::to_string(h.arena_bytes) + " bytes, above the memory quota's " +
                   std::to_string(rules.max_arena_bytes) + " bytes");
  }
  if (h.used_bytes > h.arena_bytes || h.used_bytes % kPageBytes != 0) {
    return refused("heap image declares a used span of " + std::to_string(h.used_bytes) + " bytes in an arena of " +
                   std::to_string(h.arena_bytes) + " bytes");
  }
  const std::uint64_t pages = h.used_bytes / kPageBytes;
  const std::uint64_t map_bytes = (pages + 7) / 8;
  if (h.payload_bytes < map_bytes || (h.payload_bytes - map_bytes) % kPageBytes != 0 ||
      h.payload_bytes - map_bytes > h.used_bytes) {
    return refused("heap image declares a payload of " + std::to_string(h.payload_bytes) + " bytes for " +
                   std::to_string(pages) + " pages");
  }
  if (const Hash got = hash_of(image); got != h.hash) {
    return refused("heap image hash mismatch: expected " + hex(h.hash) + ", got " + hex(got));
  }

  const std::span<const std::uint8_t> packed = image.subspan(kHeaderBytes);
  const unsigned long long declared = ZSTD_getFrameContentSize(packed.data(), packed.size());
  if (declared != h.payload_bytes) return refused("heap image: the compressed payload does not declare the header's size");
  // Streamed: the page map first (checked before any destination exists), then each kept page
  // straight into its place in the destination.
  std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> dctx(ZSTD_createDCtx(), &ZSTD_freeDCtx);
  if (!dctx) return errors::internal("zstd: cannot set up a decompression context");
  ZSTD_inBuffer in{packed.data(), packed.size(), 0};
  std::size_t failed = 0;
  std::size_t last = 1;  // ZSTD_decompressStream's last answer: 0 once the frame is complete
  // Fills exactly n bytes at `to`, or fails (a zstd error, or the payload ends short).
  const auto fill = [&](std::uint8_t* to, std::size_t n) {
    ZSTD_outBuffer out{to, n, 0};
    while (out.pos < out.size) {
      const std::size_t in_before = in.pos, out_before = out.pos;
      const std::size_t r = ZSTD_decompressStream(dctx.get(), &out, &in);
      if (ZSTD_isError(r)) {
        failed = r;
        return false;
      }
      last = r;
      if (in.pos == in_before && out.pos == out_before) return false;
    }
    return true;
  };
  const auto undecodable = [&] {
    return refused(std::string("heap image: the payload does not decompress (") +
                   (failed != 0 ? ZSTD_getErrorName(failed) : "short") + ")");
  };
  std::vector<std::uint8_t> map(map_bytes);
  if (!fill(map.data(), map.size())) return undecodable();
  const std::uint64_t kept = kept_pages(map);
  if (map_bytes * 8 > pages && (map[map_bytes - 1] >> (pages % 8)) != 0) {
    return refused("heap image: the page map marks pages past the used span");
  }
  if (map_bytes + kept * kPageBytes != h.payload_bytes) {
    return refused("heap image: the page map keeps " + std::to_string(kept) + " pages, the payload holds " +
                   std::to_string((h.payload_bytes - map_bytes) / kPageBytes));
  }
  const std::span<std::uint8_t> to = place(h, map);
  if (to.size() != kept * kPageBytes) {
    return refused("heap image: no room for its " + std::to_string(kept) + " kept pages");
  }
  // The kept pages, one after the other, straight into the destination.
  if (!to.empty() && !fill(to.data(), to.size())) return undecodable();
  // The frame must end exactly there (zstd also checks the declared size at its end).
  if (last != 0) {
    std::uint8_t extra = 0;
    ZSTD_outBuffer tail{&extra, 1, 0};
    last = ZSTD_decompressStream(dctx.get(), &tail, &in);
    if (tail.pos != 0) last = 1;
  }
  if (ZSTD_isError(last) || last != 0 || in.pos != in.size) {
    return refused("heap image: the payload does not decompress (it does not end at its declared size)");
  }
  return h;
}

Result<RestoredImage> open_image(std::span<const std::uint8_t> image, const RestoreRules& rules) {
  RestoredImage out;
  std::vector<std::uint8_t> map;
  std::vector<std::uint8_t> kept;
  Result<ImageHeader> h =
      open_image_into(image, rules, [&](const ImageHeader&, std::span<const std::uint8_t> page_map) {
        map.assign(page_map.begin(), page_map.end());
        kept.resize(kept_pages(page_map) * kPageBytes);
        return std::span<std::uint8_t>(kept);
      });
  if (!h) return h.error();
  out.header = *h;
  // The whole span, its left-out pages as zeros.
  out.used.assign(h->used_bytes, 0);
  std::size_t next = 0;
  for (std::uint64_t i = 0; i < h->used_bytes / kPageBytes; ++i) {
    if (((map[i / 8] >> (i % 8)) & 1u) != 0) {
      std::memcpy(out.used.data() + i * kPageBytes, kept.data() + next, kPageBytes);
      next += kPageBytes;
    }
  }
  return out;
}

Result<std::array<std::uint8_t, 32>> build_id_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return errors::internal("cannot read " + path + ": " + std::strerror(errno));
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return errors::internal("cannot read " + path);
  return sha256(bytes, {});
}

Result<std::array<std::uint8_t, 32>> guest_build_id(const std::string& guest_path) {
  static std::mutex mutex;
  static std::map<std::string, std::array<std::uint8_t, 32>> known;
  std::lock_guard lock(mutex);
  if (auto it = known.find(guest_path); it != known.end()) return it->second;
  Result<std::array<std::uint8_t, 32>> id = build_id_of(guest_path);
  if (id) known.emplace(guest_path, *id);
  return id;
}

}  // namespace sojourn::sandbox::image
