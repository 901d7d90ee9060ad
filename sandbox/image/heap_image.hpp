// The heap image of a strong agent (issue 13): the guest arena's used span with all-zero pages
// left out, compressed with zstd or LZ4 (or stored as it is), behind a small header. Built and checked on the HOST side
// only, so the guest stays lean and its syscall table unchanged: the guest hands over its raw
// used span, the host seals it; on restore the host checks everything it can before a single
// byte reaches a fresh guest (docs/migration.md, "Strong mobility", has the format and the
// trust model).
//
// What the checks protect is the host: an image is raw guest memory and is only ever loaded
// inside a jail, where a crafted one can at worst kill that jail.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/image_codec.hpp"

namespace sojourn::sandbox::image {

inline constexpr std::size_t kPageBytes = 4096;
// The format's version; a different one is refused (sandbox_refused).
// Version 2 added the codec.
inline constexpr std::uint32_t kFormatVersion = 2;
// The header's fixed bytes (see docs/migration.md, "Image format").
inline constexpr std::size_t kHeaderBytes = 8 + 4 + 4 + 32 + 8 + 8 + 8 + 8 + 8 + 32;

// How the payload is encoded, named in the header (sojourn/core/image_codec.hpp): which
// pays depends on the link.
using Codec = ImageCodec;
inline std::string_view codec_name(Codec codec) { return image_codec_name(codec); }
inline std::optional<Codec> parse_codec(std::string_view name) { return parse_image_codec(name); }

// What an image says about itself. Every field is covered by the hash.
struct ImageHeader {
  Codec codec = Codec::zstd;        // how the payload is encoded
  std::array<std::uint8_t, 32> guest_build{};  // SHA-256 of the guest executable
  std::uint64_t arena_base = 0;     // where the arena is mapped (kArenaBase)
  std::uint64_t arena_bytes = 0;    // the arena's mapped size: the restoring guest maps the same
  std::uint64_t used_bytes = 0;     // the arena span the image covers, from its base (whole pages)
  std::uint64_t agent_handle = 0;   // the agent coroutine (its lua_State) inside the arena
  std::uint64_t payload_bytes = 0;  // the declared uncompressed payload: page map + kept pages
  std::array<std::uint8_t, 32> hash{};  // SHA-256 of the header fields above and the encoded payload
};

// What the taking side knows besides the bytes.
struct ImageSource {
  std::array<std::uint8_t, 32> guest_build{};
  std::uint64_t arena_base = 0;
  std::uint64_t arena_bytes = 0;
  std::uint64_t agent_handle = 0;
  Codec codec = Codec::zstd;  // how to encode the payload
};

// What the restoring side insists on. The quota is the largest arena a fresh guest would map
// for the agent's memory limit (arena_bytes_for_quota of the limit, computed by the jail).
struct RestoreRules {
  std::array<std::uint8_t, 32> guest_build{};
  std::uint64_t arena_base = 0;
  std::uint64_t max_arena_bytes = 0;
};

// The restored span: `used` bytes to copy at header.arena_base in a fresh guest.
struct RestoredImage {
  ImageHeader header;
  std::vector<std::uint8_t> used;
};

// The arena's used span as a strong guest hands it over (docs/migration.md, "What travels"):
// a page map, one bit per page of the span (bit i of byte i/8, 1 = kept), and the kept pages
// in order. Pages left out are all zero. The image's payload is exactly these bytes.
struct KeptPages {
  std::uint64_t used_bytes = 0;
  std::span<const std::uint8_t> page_map;
  std::span<const std::uint8_t> pages;
};

// The page map's size for a span of `used_bytes`, and the pages it keeps (a popcount).
std::size_t page_map_bytes(std::uint64_t used_bytes);
std::uint64_t kept_pages(std::span<const std::uint8_t> page_map);

// Figures for `ps` and the benchmark.
struct ImageStats {
  std::uint64_t raw_bytes = 0;       // the used span
  std::uint64_t kept_pages = 0;      // pages that were not all zero
  std::uint64_t payload_bytes = 0;   // uncompressed payload (page map + kept pages)
  std::uint64_t image_bytes = 0;     // the whole image as it travels
  Codec codec = Codec::zstd;
};

// Seals kept pages into an image: one pass that encodes the payload with source.codec and
// hashes each piece of the encoded output as it comes. invalid_argument on a span that does not fit the arena
// (used_bytes not whole pages, or above arena_bytes) and on a page map that disagrees with it
// ("a heap image's page map ..."); internal when the codec fails.
Result<std::vector<std::uint8_t>> take_image(const ImageSource& source, const KeptPages& kept,
                                             ImageStats* stats = nullptr);
// The same from a whole span (its length a multiple of kPageBytes, at most arena_bytes): its
// all-zero pages are left out first. For tests and tools; guests hand over KeptPages.
Result<std::vector<std::uint8_t>> take_image(const ImageSource& source, std::span<const std::uint8_t> used,
                                             ImageStats* stats = nullptr);

// Fills `into` with the next bytes of the kept pages, in the map's order (into.size() is a
// whole number of pages): for pages that are not in this process (a stopped guest's arena,
// read with process_vm_readv). An error stops the sealing and is returned as it is.
using PageReader = std::function<Result<void>(std::span<std::uint8_t> into)>;
// take_image with the kept pages read piece by piece through `read` (at most kReadPiece bytes at
// a time), never gathered in one buffer. The same checks of the page map (it has no pages to
// count: `read` must deliver kept_pages(page_map) pages).
inline constexpr std::size_t kReadPiece = 1u << 20;
Result<std::vector<std::uint8_t>> take_image(const ImageSource& source, std::uint64_t used_bytes,
                                             std::span<const std::uint8_t> page_map, const PageReader& read,
                                             ImageStats* stats = nullptr);

// The header alone, parsed but not trusted (no hash check): for logs and routing.
Result<ImageHeader> peek_header(std::span<const std::uint8_t> image);

// Checks then opens an image, in this order, each refusal sandbox_refused "refused by the
// sandbox: ...":
//   1. the header is whole, of this format version and names a codec this node reads
//      ("heap image: ...", "heap image: codec N is not one this node reads (stored, zstd, lz4)");
//   2. the guest build: "image from guest build X, this node runs Y" (X, Y: the first 16 hex
//      digits of each SHA-256);
//   3. the arena address, and sizes against the quota BEFORE decompressing: "heap image declares
//      an arena of N bytes, above the memory quota's M bytes" (and the like for the span and the
//      payload);
//   4. the hash: "heap image hash mismatch: expected H1, got H2";
//   5. the encoded payload declares the header's size, and decodes to exactly that and its page map agrees with it
//      ("heap image: ..."). A well-formed image whose bytes are hostile passes: only a jail may
//      load it.
Result<RestoredImage> open_image(std::span<const std::uint8_t> image, const RestoreRules& rules);

// open_image, decompressing the kept pages straight into a destination: once the header, the
// hash and the page map are checked, `place(header, page_map)` gives exactly
// kept_pages(page_map) * kPageBytes writable bytes (in a request frame, say), and every byte of
// them is written, page after page in the map's order; the pages the map leaves out are zero,
// and are the destination's to provide. Refusals as open_image; after `place` was called a
// refusal may leave its bytes half written.
using Placer = std::function<std::span<std::uint8_t>(const ImageHeader&, std::span<const std::uint8_t> page_map)>;
Result<ImageHeader> open_image_into(std::span<const std::uint8_t> image, const RestoreRules& rules, const Placer& place);

// open_image in two phases, for a destination that exists only once the map is known (a guest
// that takes its pages straight into its arena): `check` does steps 1-4 and decompresses and
// checks the page map (the same refusals as open_image); `next` then decompresses the next
// bytes of the kept pages into `into`, in the map's order; `finish`, once all kept pages were
// taken, checks that the payload ends there. The image must outlive the opener.
//
// `hashed`, when given, is the SHA-256 its caller already found these very bytes to hash to
// (has_sealed_digest, over bytes held unchanged since): step 4 then compares the header's hash
// with it instead of a second pass over the image, and refuses a difference the same way.
// Every other step stays.
class ImageOpener {
 public:
  static Result<ImageOpener> check(std::span<const std::uint8_t> image, const RestoreRules& rules,
                                   const std::array<std::uint8_t, 32>* hashed = nullptr);
  ImageOpener(ImageOpener&&) noexcept;
  ImageOpener& operator=(ImageOpener&&) noexcept;
  ~ImageOpener();
  const ImageHeader& header() const;
  std::span<const std::uint8_t> page_map() const;
  std::uint64_t kept_bytes() const;  // kept_pages(page_map()) * kPageBytes
  Result<void> next(std::span<std::uint8_t> into);
  Result<void> finish();

 private:
  struct State;
  explicit ImageOpener(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// SHA-256 of a file (the guest build id), or internal "internal error: cannot read PATH: WHY".
Result<std::array<std::uint8_t, 32>> build_id_of(const std::string& path);
// build_id_of, computed once per path for the life of the process (what jails and nodes name
// their guest executable by: it does not change under a running node). Errors are not kept.
Result<std::array<std::uint8_t, 32>> guest_build_id(const std::string& guest_path);
std::string hex(std::span<const std::uint8_t> bytes);

// The image's digest as a record names it (AgentRecord::image_sha256): its header's hash
// field in lower-case hex, which the sealing computed over the header's other fields and the
// compressed payload. Read, not computed: no pass over the bytes. Empty for an image shorter
// than its header.
std::string digest_hex(std::span<const std::uint8_t> image);
// Whether `image` is the one `digest` names, in one pass: its header's hash field is `digest`
// and the hash recomputed over its other header fields and its payload is that too, so every
// byte of the image is covered. An image named by the SHA-256 of all its bytes (how nodes
// before this one named it, and rows they stored) is recognized too.
bool has_digest(std::span<const std::uint8_t> image, std::string_view digest);
// has_digest in the image's own form only: its header's hash field is `digest` and the hash
// recomputed over its other header fields and its payload is that too (one pass). What lets a
// holder of the bytes, unchanged since, spare an opener its pass (ImageOpener::check's
// `hashed`); an image named by the SHA-256 of all its bytes does not (its header's hash was
// never compared with its bytes).
bool has_sealed_digest(std::span<const std::uint8_t> image, std::string_view digest);
// has_sealed_digest taken as the image's bytes arrive, in order, so that a holder assembling
// an image piece by piece (agents/image_staging.cpp) hashes each piece as it lands and needs
// no second pass: `update` takes the image's next bytes (the header's hash field is skipped as
// the sealing skips it); `sealed_as` then says whether `image`, exactly the bytes fed and held
// unchanged since, is the one `digest` names in the image's own form (has_sealed_digest's
// answer). One use: sealed_as finishes the hash.
class DigestStream {
 public:
  DigestStream();
  DigestStream(DigestStream&&) noexcept;
  DigestStream& operator=(DigestStream&&) noexcept;
  ~DigestStream();
  void update(std::span<const std::uint8_t> bytes);
  bool sealed_as(std::span<const std::uint8_t> image, std::string_view digest);

 private:
  struct State;
  std::unique_ptr<State> state_;
  std::uint64_t seen_ = 0;
};
// The 32 bytes a digest in lower-case hex names; nothing for any other text.
std::optional<std::array<std::uint8_t, 32>> digest_bytes(std::string_view digest);
// What `image` hashes to as has_digest sees it (for a refusal's message): one pass.
std::string computed_digest_hex(std::span<const std::uint8_t> image);

// Asks the kernel for transparent huge pages over a large buffer about to be filled once (an
// image being sealed, received or assembled): where a 4 KB page fault is dear (about 16 us on a
// VM, so a fresh 16 MB buffer costs some 4,000 faults and 65 ms to fill), 2 MB pages cut that to
// a handful. Only the whole 2 MB pages inside [data, data + bytes) are advised, so a buffer under
// 4 MB is left alone; advice only (a kernel with THP off ignores it), and at most one 2 MB page
// past what is written may be filled in.
void advise_huge_pages(const void* data, std::size_t bytes);

// Faults in the pages of [data, data + bytes) writable, in one call (MADV_POPULATE_WRITE),
// before the caller fills them: one system call instead of one page fault per 4 KB page (a
// fresh 1 MB buffer filled by memcpy costs ~3 ms of CPU on a VM, ~1.5 ms so). The contents are
// unchanged; only bytes the caller is about to write should be asked for (each page asked
// for is memory taken). A kernel without it (before 5.14) refuses: the writes fault as before.
void prefault(const void* data, std::size_t bytes);

// Recomputes the hash of an image in place: for tests and hostile-image generators that change
// bytes after sealing and want the hash check behind them. Does nothing to a too-short image.
void reseal(std::vector<std::uint8_t>& image);

}  // namespace sojourn::sandbox::image
