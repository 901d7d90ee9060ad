// The heap image's encoding and checks (heap_image.hpp). Layout, little-endian:
//   "SJHEAPIM" u32 version, u32 codec, guest_build[32], u64 arena_base, arena_bytes, used_bytes,
//   agent_handle, payload_bytes, hash[32], then the payload in its codec (one zstd or LZ4 frame,
//   or the bytes as they are): page map (one bit per page of the used span, 1 = kept) followed
//   by the kept pages in order.
#include "sandbox/image/heap_image.hpp"

#include <sys/mman.h>

#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "sandbox/image/image_codec.hpp"
#include "sandbox/image/scratch.hpp"

namespace sojourn::sandbox::image {

namespace {

constexpr char kMagic[8] = {'S', 'J', 'H', 'E', 'A', 'P', 'I', 'M'};
constexpr std::size_t kHashAt = kHeaderBytes - 32;

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

bool valid_codec(std::uint32_t codec) { return codec <= static_cast<std::uint32_t>(Codec::lz4); }

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

// Seals a checked page map and its kept pages, which `produce(feed)` hands to `feed` as pieces
// in order (one for a guest's KeptPages, the runs of kept pages for a whole span, or what a
// PageReader reads: never copied into one buffer). feed returns false when the codec failed.
template <class Produce>
Result<std::vector<std::uint8_t>> seal(const ImageSource& source, std::uint64_t used_bytes,
                                       std::span<const std::uint8_t> page_map, Produce&& produce,
                                       std::uint64_t kept_count, ImageStats* stats) {
  const std::size_t payload_bytes = page_map.size() + kept_count * kPageBytes;
  const std::unique_ptr<detail::Encoder> encoder = detail::make_encoder(source.codec, payload_bytes);
  if (!encoder) return errors::internal(std::string(codec_name(source.codec)) + ": cannot set up a compression context");
  // A large or mid-sized image goes into the buffer of one of its class let go before when there
  // is one (shared_image), its pages already faulted in: a fresh 64 MB-class buffer cost the
  // kernel ~9 ms of page zeroing a hop on a quiet machine and 100 ms or more under load
  // (bench/RESULTS.md), a fresh 1 MB one a fresh mapping faulted in page by page. Emptied
  // first: only the bytes written below are ever the image's (its size), none of the old ones.
  std::vector<std::uint8_t> image = take_image_buffer(kHeaderBytes + encoder->bound(payload_bytes));
  image.clear();
  image.insert(image.end(), kMagic, kMagic + sizeof kMagic);
  put(image, kFormatVersion, 4);
  put(image, static_cast<std::uint32_t>(source.codec), 4);
  image.insert(image.end(), source.guest_build.begin(), source.guest_build.end());
  for (std::uint64_t v : {source.arena_base, source.arena_bytes, used_bytes, source.agent_handle,
                          std::uint64_t{payload_bytes}}) {
    put(image, v, 8);
  }
  // One pass: the page map and the kept pages go into the codec as they are, and each piece of
  // its output is hashed as it comes out, while it is still in the cache, and appended: the
  // image's bound is reserved but never zero-filled, so only the pages the encoded bytes need
  // are ever touched (a bound's worth of page faults and a memset saved).
  Sha256 hash;
  hash.update(std::span<const std::uint8_t>(image).first(kHashAt));
  image.reserve(kHeaderBytes + encoder->bound(payload_bytes));
  advise_huge_pages(image.data(), image.capacity());
  image.resize(kHeaderBytes);  // the hash's place, filled in at the end
  // The bound is not known to be written (a compressible heap seals to far less): its pages are
  // faulted in ahead of the output, a stretch at a time, only as far as the output goes.
  constexpr std::size_t kPrefaultStretch = std::size_t{256} << 10;
  std::size_t prefaulted = 0;  // bytes of the buffer faulted in ahead
  const detail::Sink sink = [&](std::span<const std::uint8_t> written) {
    hash.update(written);
    const std::size_t need = image.size() + written.size();
    if (need > prefaulted && need <= image.capacity()) {
      const std::size_t upto = std::min(image.capacity(), need + kPrefaultStretch);
      prefault(image.data() + prefaulted, upto - prefaulted);
      prefaulted = upto;
    }
    image.insert(image.end(), written.begin(), written.end());
  };
  bool ok = encoder->feed(page_map, sink);
  if (ok) {
    // feed(bytes) or feed(bytes, &meanwhile): see Encoder::feed.
    Result<void> produced = produce([&](std::span<const std::uint8_t> bytes, const std::function<void()>* meanwhile = nullptr) {
      if (!ok) return false;
      return ok = meanwhile != nullptr ? encoder->feed(bytes, sink, *meanwhile) : encoder->feed(bytes, sink);
    });
    if (!produced) return produced.error();
  }
  ok = ok && encoder->end(sink);
  if (!ok) return errors::internal(std::string(codec_name(source.codec)) + ": " + encoder->why());
  const Hash h = hash.finish();
  std::copy(h.begin(), h.end(), image.begin() + kHashAt);
  if (stats != nullptr) *stats = ImageStats{used_bytes, kept_count, payload_bytes, image.size(), source.codec};
  return image;
}

}  // namespace

namespace {

// The checks every sealing of kept pages makes of its span and page map; `pages_bytes` is the
// kept pages' bytes when the caller has them (UINT64_MAX: they are read later).
Result<void> check_kept(const ImageSource& source, std::uint64_t used_bytes, std::span<const std::uint8_t> page_map,
                        std::uint64_t pages_bytes) {
  if (used_bytes % kPageBytes != 0 || used_bytes > source.arena_bytes) {
    return errors::invalid_argument("a heap image covers whole pages of the arena (" + std::to_string(used_bytes) +
                                    " bytes of an arena of " + std::to_string(source.arena_bytes) + ")");
  }
  const std::uint64_t pages = used_bytes / kPageBytes;
  const std::uint64_t kept_count = kept_pages(page_map);
  if (page_map.size() != page_map_bytes(used_bytes) || (pages % 8 != 0 && (page_map.back() >> (pages % 8)) != 0) ||
      (pages_bytes != UINT64_MAX && pages_bytes != kept_count * kPageBytes)) {
    return errors::invalid_argument("a heap image's page map of " + std::to_string(page_map.size()) + " bytes keeps " +
                                    std::to_string(kept_count) + " of " + std::to_string(pages) + " pages, with " +
                                    (pages_bytes == UINT64_MAX ? std::string("its pages read apart")
                                                               : std::to_string(pages_bytes) + " bytes of pages"));
  }
  return {};
}

}  // namespace

Result<std::vector<std::uint8_t>> take_image(const ImageSource& source, const KeptPages& kept, ImageStats* stats) {
  if (Result<void> ok = check_kept(source, kept.used_bytes, kept.page_map, kept.pages.size()); !ok) return ok.error();
  return seal(
      source, kept.used_bytes, kept.page_map,
      [&](const auto& feed) -> Result<void> {
        feed(kept.pages);
        return {};
      },
      kept_pages(kept.page_map), stats);
}

Result<std::vector<std::uint8_t>> take_image(const ImageSource& source, std::uint64_t used_bytes,
                                             std::span<const std::uint8_t> page_map, const PageReader& read,
                                             ImageStats* stats) {
  if (Result<void> ok = check_kept(source, used_bytes, page_map, UINT64_MAX); !ok) return ok.error();
  const std::uint64_t kept_count = kept_pages(page_map);
  // Two reused buffers, each small enough to stay in the cache between the read and the codec:
  // the next piece is read into one while the codec (its helper thread) works on the other, so
  // the reads are no longer a stretch in which the helper waits. The pieces, their order and
  // every byte fed are as they were: only when the reads happen changes.
  const std::uint64_t total = kept_count * kPageBytes;
  const std::size_t piece = static_cast<std::size_t>(std::min<std::uint64_t>(kReadPiece, total));
  const Scratch first(piece);
  const std::optional<Scratch> second = total > piece ? std::optional<Scratch>(std::in_place, piece) : std::nullopt;
  const std::span<std::uint8_t> buffers[2] = {first.bytes(), second ? second->bytes() : first.bytes()};
  return seal(
      source, used_bytes, page_map,
      [&](const auto& feed) -> Result<void> {
        if (total == 0) return {};
        if (Result<void> got = read(buffers[0].first(piece)); !got) return got.error();
        int at = 0;  // the buffer holding the piece to feed
        for (std::uint64_t left = total; left > 0;) {
          const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, piece));
          left -= n;
          const std::size_t next = static_cast<std::size_t>(std::min<std::uint64_t>(left, piece));
          Result<void> got;
          const std::function<void()> read_next = [&] {
            if (next > 0) got = read(buffers[1 - at].first(next));
          };
          if (!feed(std::span<const std::uint8_t>(buffers[at].first(n)), &read_next)) return {};  // seal reports the codec's error
          if (!got) return got.error();
          at = 1 - at;
        }
        return {};
      },
      kept_count, stats);
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
  return seal(
      source, used.size(), map,
      [&](const auto& feed) -> Result<void> {
        for (std::span<const std::uint8_t> run : runs) {
          if (!feed(run)) break;
        }
        return {};
      },
      kept, stats);
}

void advise_huge_pages(const void* data, std::size_t bytes) {
  constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;
  const auto at = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t begin = (at + kHugePage - 1) & ~(kHugePage - 1);
  const std::uintptr_t end = (at + bytes) & ~(kHugePage - 1);
  // SAFETY: [begin, end) lies inside the caller's buffer, whole pages; the advice changes how
  // its pages are backed, never their contents (an error, THP off, is of no consequence).
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

void prefault(const void* data, std::size_t bytes) {
#ifndef MADV_POPULATE_WRITE
  constexpr int MADV_POPULATE_WRITE = 23;  // Linux 5.14; older headers lack the name
#endif
  if (bytes == 0) return;
  constexpr std::uintptr_t kPage = kPageBytes;
  const auto at = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t begin = at & ~(kPage - 1);
  const std::uintptr_t end = (at + bytes + kPage - 1) & ~(kPage - 1);
  // SAFETY: the pages holding [data, data + bytes) are mapped (the caller's buffer); populating
  // them changes no byte, and an error (an old kernel) is of no consequence.
  (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
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
  const auto codec = static_cast<std::uint32_t>(get(image, 12, 4));
  if (!valid_codec(codec)) {
    return refused("heap image: codec " + std::to_string(codec) + " is not one this node reads (stored, zstd, lz4)");
  }
  ImageHeader h;
  h.codec = static_cast<Codec>(codec);
  std::copy_n(image.begin() + 16, 32, h.guest_build.begin());
  h.arena_base = get(image, 48, 8);
  h.arena_bytes = get(image, 56, 8);
  h.used_bytes = get(image, 64, 8);
  h.agent_handle = get(image, 72, 8);
  h.payload_bytes = get(image, 80, 8);
  std::copy_n(image.begin() + kHashAt, 32, h.hash.begin());
  return h;
}

struct ImageOpener::State {
  ImageHeader header;
  std::vector<std::uint8_t> map;
  std::uint64_t kept_bytes = 0;
  std::uint64_t taken = 0;
  std::unique_ptr<detail::Decoder> decoder;

  // Fills exactly n bytes at `to`, or fails (the payload does not decode, or ends short).
  bool fill(std::uint8_t* to, std::size_t n) { return decoder->fill(to, n); }
  Error undecodable() const { return refused("heap image: the payload does not decompress (" + decoder->why() + ")"); }
};

ImageOpener::ImageOpener(std::unique_ptr<State> state) : state_(std::move(state)) {}
ImageOpener::ImageOpener(ImageOpener&&) noexcept = default;
ImageOpener& ImageOpener::operator=(ImageOpener&&) noexcept = default;
ImageOpener::~ImageOpener() = default;
const ImageHeader& ImageOpener::header() const { return state_->header; }
std::span<const std::uint8_t> ImageOpener::page_map() const { return state_->map; }
std::uint64_t ImageOpener::kept_bytes() const { return state_->kept_bytes; }

Result<ImageOpener> ImageOpener::check(std::span<const std::uint8_t> image, const RestoreRules& rules,
                                       const Hash* hashed) {
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
  // The caller's pass over these bytes when it made one (`hashed`), this one's otherwise.
  if (const Hash got = hashed != nullptr ? *hashed : hash_of(image); got != h.hash) {
    return refused("heap image hash mismatch: expected " + hex(h.hash) + ", got " + hex(got));
  }

  // Streamed: the page map first (checked before any destination exists), then the kept pages
  // as the caller takes them.
  auto state = std::make_unique<State>();
  std::string why;
  bool internal = false;
  state->decoder = detail::make_decoder(h.codec, image.subspan(kHeaderBytes), h.payload_bytes, why, internal);
  if (!state->decoder) return internal ? errors::internal(why) : refused("heap image: " + why);
  state->header = h;
  state->map.resize(map_bytes);
  if (!state->fill(state->map.data(), state->map.size())) return state->undecodable();
  const std::uint64_t kept = kept_pages(state->map);
  if (map_bytes * 8 > pages && (state->map[map_bytes - 1] >> (pages % 8)) != 0) {
    return refused("heap image: the page map marks pages past the used span");
  }
  if (map_bytes + kept * kPageBytes != h.payload_bytes) {
    return refused("heap image: the page map keeps " + std::to_string(kept) + " pages, the payload holds " +
                   std::to_string((h.payload_bytes - map_bytes) / kPageBytes));
  }
  state->kept_bytes = kept * kPageBytes;
  return ImageOpener(std::move(state));
}

Result<void> ImageOpener::next(std::span<std::uint8_t> into) {
  State& s = *state_;
  if (into.size() > s.kept_bytes - s.taken) {
    return refused("heap image: no room for its " + std::to_string(s.kept_bytes / kPageBytes) + " kept pages");
  }
  if (!into.empty() && !s.fill(into.data(), into.size())) return s.undecodable();
  s.taken += into.size();
  return {};
}

Result<void> ImageOpener::finish() {
  State& s = *state_;
  if (s.taken != s.kept_bytes) {
    return refused("heap image: no room for its " + std::to_string(s.kept_bytes / kPageBytes) + " kept pages");
  }
  if (!s.decoder->ends_here()) {
    return refused("heap image: the payload does not decompress (it does not end at its declared size)");
  }
  return {};
}

Result<ImageHeader> open_image_into(std::span<const std::uint8_t> image, const RestoreRules& rules, const Placer& place) {
  Result<ImageOpener> opener = ImageOpener::check(image, rules);
  if (!opener) return opener.error();
  const std::span<std::uint8_t> to = place(opener->header(), opener->page_map());
  if (to.size() != opener->kept_bytes()) {
    return refused("heap image: no room for its " + std::to_string(opener->kept_bytes() / kPageBytes) + " kept pages");
  }
  // The kept pages, one after the other, straight into the destination.
  if (Result<void> taken = opener->next(to); !taken) return taken.error();
  if (Result<void> done = opener->finish(); !done) return done.error();
  return opener->header();
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

std::string digest_hex(std::span<const std::uint8_t> image) {
  if (image.size() < kHeaderBytes) return {};
  return hex(image.subspan(kHashAt, 32));
}

bool has_digest(std::span<const std::uint8_t> image, std::string_view digest) {
  if (image.size() >= kHeaderBytes && digest_hex(image) == digest) return hex(hash_of(image)) == digest;
  // Named by the SHA-256 of the whole image (older nodes and rows): that, in one pass too.
  return hex(sha256(image, {})) == digest;
}

bool has_sealed_digest(std::span<const std::uint8_t> image, std::string_view digest) {
  return image.size() >= kHeaderBytes && digest_hex(image) == digest && hex(hash_of(image)) == digest;
}

struct DigestStream::State {
  Sha256 hash;
};

DigestStream::DigestStream() : state_(std::make_unique<State>()) {}
DigestStream::DigestStream(DigestStream&&) noexcept = default;
DigestStream& DigestStream::operator=(DigestStream&&) noexcept = default;
DigestStream::~DigestStream() = default;

void DigestStream::update(std::span<const std::uint8_t> bytes) {
  const std::uint64_t at = seen_;
  seen_ += bytes.size();
  // hash_of's two spans: the header up to its hash field, then everything after the header.
  if (at < kHashAt) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), kHashAt - at));
    state_->hash.update(bytes.first(n));
  }
  if (seen_ > kHeaderBytes) {
    const std::size_t skip = at >= kHeaderBytes ? 0 : static_cast<std::size_t>(kHeaderBytes - at);
    state_->hash.update(bytes.subspan(skip));
  }
}

bool DigestStream::sealed_as(std::span<const std::uint8_t> image, std::string_view digest) {
  if (image.size() < kHeaderBytes || image.size() != seen_ || digest_hex(image) != digest) return false;
  seen_ = ~std::uint64_t{0};  // finished: a second call answers no
  return hex(state_->hash.finish()) == digest;
}

std::optional<Hash> digest_bytes(std::string_view digest) {
  if (digest.size() != 64) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  Hash out{};
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(digest[2 * i]);
    const int lo = nibble(digest[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return out;
}

std::string computed_digest_hex(std::span<const std::uint8_t> image) {
  return image.size() >= kHeaderBytes ? hex(hash_of(image)) : hex(sha256(image, {}));
}

Result<std::array<std::uint8_t, 32>> build_id_of(const std::string& path) {
  // Hashed as it is read, 64 KB at a time through one buffer: the guest binary (a few MB) is
  // neither copied whole nor read a character at a time (a first strong step waited ~4 ms
  // of page faults and stream overhead for it).
  std::ifstream in(path, std::ios::binary);
  if (!in) return errors::internal("cannot read " + path + ": " + std::strerror(errno));
  Sha256 hash;
  std::vector<std::uint8_t> piece(std::size_t{64} << 10);
  // SAFETY: read() writes at most piece.size() bytes into the buffer; gcount() says how many.
  while (in.read(reinterpret_cast<char*>(piece.data()), static_cast<std::streamsize>(piece.size())) || in.gcount() > 0) {
    hash.update(std::span(piece.data(), static_cast<std::size_t>(in.gcount())));
    if (!in) break;  // the last, short piece
  }
  if (in.bad()) return errors::internal("cannot read " + path);
  return hash.finish();
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
