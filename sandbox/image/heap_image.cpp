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

// SHA-256 of two spans in sequence.
Hash sha256(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) {
  Hash out{};
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  unsigned int n = 0;
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), a.data(), a.size()) != 1 || EVP_DigestUpdate(ctx.get(), b.data(), b.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), out.data(), &n) != 1) {
    out.fill(0);  // an all-zero hash never matches a real one: the image is refused, not trusted
  }
  return out;
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

Result<std::vector<std::uint8_t>> take_image(const ImageSource& source, std::span<const std::uint8_t> used,
                                             ImageStats* stats) {
  if (used.size() % kPageBytes != 0 || used.size() > source.arena_bytes) {
    return errors::invalid_argument("a heap image covers whole pages of the arena (" + std::to_string(used.size()) +
                                    " bytes of an arena of " + std::to_string(source.arena_bytes) + ")");
  }
  const std::size_t pages = used.size() / kPageBytes;
  std::vector<std::uint8_t> payload((pages + 7) / 8);
  std::size_t kept = 0;
  for (std::size_t i = 0; i < pages; ++i) {
    if (!all_zero(used.data() + i * kPageBytes)) {
      payload[i / 8] = static_cast<std::uint8_t>(payload[i / 8] | (1u << (i % 8)));
      ++kept;
    }
  }
  payload.reserve(payload.size() + kept * kPageBytes);
  for (std::size_t i = 0; i < pages; ++i) {
    if ((payload[i / 8] >> (i % 8)) & 1u) payload.insert(payload.end(), used.begin() + static_cast<std::ptrdiff_t>(i * kPageBytes),
                                                         used.begin() + static_cast<std::ptrdiff_t>((i + 1) * kPageBytes));
  }

  std::vector<std::uint8_t> image(kMagic, kMagic + sizeof kMagic);
  put(image, kFormatVersion, 4);
  image.insert(image.end(), source.guest_build.begin(), source.guest_build.end());
  for (std::uint64_t v : {source.arena_base, source.arena_bytes, std::uint64_t{used.size()}, source.agent_handle,
                          std::uint64_t{payload.size()}}) {
    put(image, v, 8);
  }
  image.resize(kHeaderBytes + ZSTD_compressBound(payload.size()));
  const std::size_t packed = ZSTD_compress(image.data() + kHeaderBytes, image.size() - kHeaderBytes, payload.data(),
                                           payload.size(), kZstdLevel);
  if (ZSTD_isError(packed)) return errors::internal(std::string("zstd: ") + ZSTD_getErrorName(packed));
  image.resize(kHeaderBytes + packed);
  reseal(image);
  if (stats != nullptr) *stats = ImageStats{used.size(), kept, payload.size(), image.size()};
  return image;
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

Result<RestoredImage> open_image(std::span<const std::uint8_t> image, const RestoreRules& rules) {
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
  std::vector<std::uint8_t> payload(h.payload_bytes);
  const std::size_t n = ZSTD_decompress(payload.data(), payload.size(), packed.data(), packed.size());
  if (ZSTD_isError(n) || n != payload.size()) {
    return refused(std::string("heap image: the payload does not decompress (") +
                   (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short") + ")");
  }
  std::uint64_t kept = 0;
  for (std::uint64_t i = 0; i < map_bytes; ++i) kept += static_cast<std::uint64_t>(__builtin_popcount(payload[i]));
  if (map_bytes * 8 > pages && (payload[map_bytes - 1] >> (pages % 8)) != 0) {
    return refused("heap image: the page map marks pages past the used span");
  }
  if (map_bytes + kept * kPageBytes != h.payload_bytes) {
    return refused("heap image: the page map keeps " + std::to_string(kept) + " pages, the payload holds " +
                   std::to_string((h.payload_bytes - map_bytes) / kPageBytes));
  }

  RestoredImage out{h, std::vector<std::uint8_t>(h.used_bytes)};
  const std::uint8_t* page = payload.data() + map_bytes;
  for (std::uint64_t i = 0; i < pages; ++i) {
    if (((payload[i / 8] >> (i % 8)) & 1u) == 0) continue;
    std::memcpy(out.used.data() + i * kPageBytes, page, kPageBytes);
    page += kPageBytes;
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
