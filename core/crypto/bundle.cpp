// Bundles: validation, the canonical encoding and its SHA-256.
#include "sojourn/core/bundle.hpp"

#include <openssl/evp.h>

#include "core/wire_io.hpp"

namespace sojourn {

namespace {

constexpr std::uint32_t kBundleMagic = 0x534a4232;  // "SJB2" (SJB1 had no cpu_budget)
// "SJB3": SJB2 plus the manifest's mobility, used only for strong bundles, so that a weak
// bundle's encoding and hash are what they were before the field existed.
constexpr std::uint32_t kStrongBundleMagic = 0x534a4233;
constexpr std::string_view kStrongMobility = "strong";
constexpr std::size_t kMaxFiles = 256;
constexpr std::size_t kMaxSourceBytes = 16u << 20;
constexpr std::size_t kMaxNameLength = 64;

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

bool valid_dotted_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  bool part_empty = true;
  for (char c : name) {
    if (c == '.') {
      if (part_empty) return false;
      part_empty = true;
    } else if (name_char(c)) {
      part_empty = false;
    } else {
      return false;
    }
  }
  return !part_empty;
}


void write_manifest(wire::Writer& w, const BundleManifest& m) {
  w.string(m.name);
  w.string(m.version);
  w.string(m.main);
  w.u32(static_cast<std::uint32_t>(m.entry_points.size()));
  for (const auto& e : m.entry_points) w.string(e);
  wire::write_limits(w, m.quotas);
  w.u32(m.max_hops);
  w.u64(m.cpu_budget);
  if (m.mobility == kStrongMobility) w.string(m.mobility);
}

std::uint32_t magic_of(const BundleManifest& m) { return m.mobility == kStrongMobility ? kStrongBundleMagic : kBundleMagic; }

}  // namespace

const std::string& Bundle::main_source() const {
  static const std::string empty;
  auto it = files.find(main_file());
  return it == files.end() ? empty : it->second;
}

std::string Bundle::main_file() const { return manifest.main.empty() ? manifest.name + ".lua" : manifest.main; }

Result<void> validate_module_name(std::string_view name) {
  if (!valid_dotted_name(name)) return make_error(Errc::bad_bundle, "bad bundle: invalid module name '" + std::string(name) + "'");
  return {};
}

Result<void> validate_file_name(std::string_view name) {
  constexpr std::string_view ext = ".lua";
  if (name.size() <= ext.size() || name.substr(name.size() - ext.size()) != ext ||
      !valid_dotted_name(name.substr(0, name.size() - ext.size()))) {
    return make_error(Errc::bad_bundle, "bad bundle: invalid file name '" + std::string(name) + "'");
  }
  return {};
}

Result<void> validate_bundle(const Bundle& bundle) {
  if (auto r = validate_module_name(bundle.manifest.name); !r) return r;
  if (bundle.files.size() > kMaxFiles) {
    return make_error(Errc::bad_bundle, "bad bundle: more than " + std::to_string(kMaxFiles) + " files");
  }
  std::size_t total = 0;
  for (const auto& [file, source] : bundle.files) {
    if (auto r = validate_file_name(file); !r) return r;
    if (!source.empty() && source.front() == '\x1b') {
      return make_error(Errc::bad_bundle, "bad bundle: file " + file + " is not Lua source text");
    }
    total += source.size();
  }
  if (total > kMaxSourceBytes) {
    return make_error(Errc::bad_bundle, "bad bundle: more than " + std::to_string(kMaxSourceBytes) + " bytes of source");
  }
  const std::string main = bundle.main_file();
  if (auto r = validate_file_name(main); !r) return r;
  if (bundle.files.find(main) == bundle.files.end()) {
    return make_error(Errc::bad_bundle, "bad bundle: the main file " + main + " is missing");
  }
  if (bundle.manifest.mobility != "weak" && bundle.manifest.mobility != kStrongMobility) {
    return make_error(Errc::bad_bundle, "bad bundle: mobility must be weak or strong, not '" + bundle.manifest.mobility + "'");
  }
  for (const auto& entry : bundle.manifest.entry_points) {
    if (!valid_dotted_name(entry)) return make_error(Errc::bad_bundle, "bad bundle: invalid entry point '" + entry + "'");
  }
  return {};
}

Result<Bundle> single_file_bundle(std::string name, std::string source, std::vector<std::string> entry_points) {
  Bundle b;
  b.manifest.name = std::move(name);
  b.manifest.entry_points = std::move(entry_points);
  b.files.emplace(b.manifest.name + ".lua", std::move(source));
  if (auto r = validate_bundle(b); !r) return r.error();
  return b;
}

std::vector<std::uint8_t> encode_manifest(const BundleManifest& manifest) {
  wire::Writer w;
  write_manifest(w, manifest);
  return w.take();
}

std::vector<std::uint8_t> encode_bundle(const Bundle& bundle) {
  wire::Writer w;
  w.u32(magic_of(bundle.manifest));
  write_manifest(w, bundle.manifest);
  w.u32(static_cast<std::uint32_t>(bundle.files.size()));
  for (const auto& [file, source] : bundle.files) {  // std::map: sorted by name
    w.string(file);
    w.string(source);
  }
  return w.take();
}

Result<Bundle> decode_bundle(std::span<const std::uint8_t> bytes) {
  Bundle b;
  try {
    wire::Reader r(bytes);
    const std::uint32_t magic = r.u32();
    if (magic != kBundleMagic && magic != kStrongBundleMagic) {
      return make_error(Errc::bad_bundle, "bad bundle: not a bundle encoding");
    }
    BundleManifest& m = b.manifest;
    m.name = r.string();
    m.version = r.string();
    m.main = r.string();
    const std::uint32_t entries = r.count(4, "entry point");
    for (std::uint32_t i = 0; i < entries; ++i) m.entry_points.push_back(r.string());
    m.quotas = wire::read_limits(r);
    m.max_hops = r.u32();
    m.cpu_budget = r.u64();
    if (magic == kStrongBundleMagic) {
      m.mobility = r.string();
      // One encoding per bundle: a weak one is always SJB2.
      if (m.mobility != kStrongMobility) {
        return make_error(Errc::bad_bundle, "bad bundle: not a canonical encoding (mobility '" + m.mobility +
                                                "' in the strong bundle format)");
      }
    }
    const std::uint32_t files = r.count(8, "file");
    std::string previous;
    for (std::uint32_t i = 0; i < files; ++i) {
      std::string file = r.string();
      if (i > 0 && file <= previous) return make_error(Errc::bad_bundle, "bad bundle: files out of canonical order");
      previous = file;
      b.files.emplace(std::move(file), r.string());
    }
    r.expect_end();
  } catch (const std::exception& e) {
    return make_error(Errc::bad_bundle, std::string("bad bundle: ") + e.what());
  }
  if (auto v = validate_bundle(b); !v) return v.error();
  return b;
}

std::string sha256_hex(std::span<const std::uint8_t> bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  // One-shot digest; fails only without memory, which the caller cannot recover from either.
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 failed");
  }
  return hex_encode(std::span<const std::uint8_t>(digest, length));
}

std::string hex_encode(std::span<const std::uint8_t> bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0xf]);
  }
  return out;
}

bool is_lower_hex(std::string_view text, std::size_t digits) {
  if (text.size() != digits) return false;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool is_bundle_hash(std::string_view text) { return is_lower_hex(text, 64); }

}  // namespace sojourn
