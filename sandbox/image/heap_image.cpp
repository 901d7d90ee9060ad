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
  std::vector<std::uint8_t> map((pages + 7) / 8);
  std::size_t kept = 0;
  for (std::size_t i = 0; i < pages; ++i) {
    if (!all_zero(used.data() + i * kPageBytes)) {
      map[i / 8] = static_cast<std::uint8_t>(map[i / 8] | (1u << (i % 8)));
      ++kept;
    }
  }
  const std::size_t payload_bytes = map.size() + kept * kPageBytes;

  std::vector<std::uint8_t> image(kMagic, kMagic + sizeof kMagic);
  put(image, kFormatVersion, 4);
  image.insert(image.end(), source.guest_build.begin(), source.guest_build.end());
  for (std::uint64_t v : {source.arena_base, source.arena_bytes, std::uint64_t{used.size()}, source.agent_handle,
                          std::uint64_t{payload_bytes}}) {
    put(image, v, 8);
  }
  // The payload (page map, then the kept pages) is streamed from the span into the frame: it
  // never exists as one buffer. The pledged size puts the payload's size in the frame header.
  std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), &ZSTD_freeCCtx);
  if (!cctx || ZSTD_isError(ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, kZstdLevel)) ||
      ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(cctx.get(), payload_bytes))) {
    return errors::internal("zstd: cannot set up a compression context");
  }
  image.resize(kHeaderBytes + ZSTD_compressBound(payload_bytes));
  ZSTD_outBuffer out{image.data() + kHeaderBytes, image.size() - kHeaderBytes, 0};
  std::size_t failed = 0;
  const auto feed = [&](const std::uint8_t* bytes, std::size_t n, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{bytes, n, 0};
    for (;;) {
      const std::size_t left = ZSTD_compressStream2(cctx.get(), &out, &in, mode);
      if (ZSTD_isError(left)) {
        failed = left;
        return false;
      }
      if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) return true;
      if (out.pos == out.size) return false;  // cannot happen within the bound
    }
  };
  bool ok = feed(map.data(), map.size(), ZSTD_e_continue);
  // Runs of kept pages go in as one input each.
  for (std::size_t i = 0; ok && i < pages;) {
    if (((map[i / 8] >> (i % 8)) & 1u) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    while (j < pages && ((map[j / 8] >> (j % 8)) & 1u) != 0) ++j;
    ok = feed(used.data() + i * kPageBytes, (j - i) * kPageBytes, ZSTD_e_continue);
    i = j;
  }
  if (ok) ok = feed(nullptr, 0, ZSTD_e_end);
  if (!ok) return errors::internal(std::string("zstd: ") + (failed != 0 ? ZSTD_getErrorName(failed) : "output overflow"));
  image.resize(kHeaderBytes + out.pos);
  reseal(image);
  if (stats != nullptr) *stats = ImageStats{used.size(), kept, payload_bytes, image.size()};
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
  std::uint64_t kept = 0;
  for (std::uint8_t b : map) kept += static_cast<std::uint64_t>(__builtin_popcount(b));
  if (map_bytes * 8 > pages && (map[map_bytes - 1] >> (pages % 8)) != 0) {
    return refused("heap image: the page map marks pages past the used span");
  }
  if (map_bytes + kept * kPageBytes != h.payload_bytes) {
    return refused("heap image: the page map keeps " + std::to_string(kept) + " pages, the payload holds " +
                   std::to_string((h.payload_bytes - map_bytes) / kPageBytes));
  }
  const std::span<std::uint8_t> to = place(h);
  if (to.size() != h.used_bytes) {
    return refused("heap image: no room for its used span of " + std::to_string(h.used_bytes) + " bytes");
  }
  for (std::uint64_t i = 0; i < pages; ++i) {
    std::uint8_t* page = to.data() + i * kPageBytes;
    if (((map[i / 8] >> (i % 8)) & 1u) == 0) {
      std::memset(page, 0, kPageBytes);
    } else if (!fill(page, kPageBytes)) {
      return undecodable();
    }
  }
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
  Result<ImageHeader> h = open_image_into(image, rules, [&out](const ImageHeader& header) {
    out.used.resize(header.used_bytes);
    return std::span<std::uint8_t>(out.used);
  });
  if (!h) return h.error();
  out.header = *h;
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
