// Code bundles: the unit in which code travels (code-on-demand and mobile agents). A bundle
// is a manifest plus Lua source files, addressed by the SHA-256 of its canonical encoding,
// so a node that holds a hash never needs the code again.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"

namespace sojourn {

struct BundleManifest {
  std::string name;                       // a module name (see validate_module_name)
  std::string version = "0";
  std::string main;                       // the file run first; "<name>.lua" when empty
  std::vector<std::string> entry_points;  // functions an agent may start or resume at
  Limits quotas;                          // requested per run (zero: the node's defaults)
  std::uint32_t max_hops = 0;             // for agents; zero: the node's default
  // For agents: Lua instructions it may spend over its whole life, all hops together
  // (zero: no total, only the per-run quota). A signed bundle makes this the ceiling
  // every node applies; the agent record carries what is left.
  std::uint64_t cpu_budget = 0;
  // For agents: "weak" (the state table travels, a go restarts at an entry) or "strong" (the
  // heap image travels, a go returns on the destination). Signed with the rest: a node runs
  // an agent of a strong bundle as a strong agent, and a signed bundle's agent only with the
  // mobility its owner signed.
  std::string mobility = "weak";

  friend bool operator==(const BundleManifest&, const BundleManifest&) = default;
};

struct Bundle {
  BundleManifest manifest;
  std::map<std::string, std::string> files;  // file name -> Lua source text, sorted by name

  // The main file's source; empty when it is missing (validate_bundle refuses that).
  const std::string& main_source() const;
  std::string main_file() const;

  friend bool operator==(const Bundle&, const Bundle&) = default;
};

// Module names: 1 to 64 characters of [A-Za-z0-9_-], in dot-separated parts ("util.text");
// no slashes, no empty parts, so a name can never be a path. File names are a module name
// plus ".lua". Errors: bad_bundle "bad bundle: invalid module name 'NAME'" and
// "bad bundle: invalid file name 'NAME'".
Result<void> validate_module_name(std::string_view name);
Result<void> validate_file_name(std::string_view name);

// Every name valid, the main file present, at most 256 files and 16 MiB of source, no
// bytecode ("bad bundle: file NAME is not Lua source text"), the mobility "weak" or "strong"
// ("bad bundle: mobility must be weak or strong, not 'X'").
Result<void> validate_bundle(const Bundle& bundle);

// A one-file bundle: manifest.name = `name`, main = "<name>.lua".
Result<Bundle> single_file_bundle(std::string name, std::string source, std::vector<std::string> entry_points = {});

// The canonical encoding (fields in a fixed order, files sorted by name) and its hash. A weak
// bundle keeps the encoding it had before the manifest named a mobility (so its hash is
// unchanged); a strong one is encoded with the mobility after the CPU budget.
std::vector<std::uint8_t> encode_bundle(const Bundle& bundle);
// The manifest alone, in the same canonical form (what a bundle signature covers with the hash).
std::vector<std::uint8_t> encode_manifest(const BundleManifest& manifest);
// Decodes and validates.
Result<Bundle> decode_bundle(std::span<const std::uint8_t> bytes);

// Bytes as lowercase hex, and whether `text` is exactly `digits` lowercase hex digits.
std::string hex_encode(std::span<const std::uint8_t> bytes);
bool is_lower_hex(std::string_view text, std::size_t digits);

// Lowercase hex SHA-256 (OpenSSL libcrypto).
std::string sha256_hex(std::span<const std::uint8_t> bytes);
inline std::string bundle_hash(const Bundle& bundle) { return sha256_hex(encode_bundle(bundle)); }
// A hash as bundle_hash prints it: 64 lowercase hex digits.
bool is_bundle_hash(std::string_view text);

}  // namespace sojourn
