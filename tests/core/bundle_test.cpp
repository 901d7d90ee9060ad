// Tests of code bundles: names that cannot be paths, the canonical encoding, and the hash.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "sojourn/core/bundle.hpp"
#include "tests/support/error_checks.hpp"

using sojourn::Bundle;
using sojourn::Errc;

namespace {
Bundle sample() {
  auto b = sojourn::single_file_bundle("stats", "return { mean = function(t) return 0 end }", {"mean"});
  REQUIRE(b.ok());
  b->files.emplace("stats.util.lua", "return {}");
  return *b;
}
}  // namespace

TEST_CASE("module names with path tricks are refused") {
  const std::vector<std::string> bads = {"", "../etc", "a/b", "/abs", "a..b", ".hidden", "trailing.", "sp ace", "a\\b",
                                         std::string("nul\0x", 5)};
  for (const std::string& bad : bads) {
    auto r = sojourn::validate_module_name(bad);
    CHECK_FALSE(r.ok());
    CHECK(r.error().code == Errc::bad_bundle);
  }
  CHECK_ERROR(sojourn::validate_module_name("../etc"), Errc::bad_bundle, "'../etc'");
  CHECK(sojourn::validate_module_name("util.text-2_x").ok());
  CHECK_FALSE(sojourn::validate_module_name(std::string(65, 'a')).ok());
  CHECK(sojourn::validate_file_name("stats.lua").ok());
  CHECK_FALSE(sojourn::validate_file_name("stats").ok());
  CHECK_FALSE(sojourn::validate_file_name("../stats.lua").ok());
}

TEST_CASE("a bundle survives its canonical encoding and its hash is stable") {
  Bundle b = sample();
  auto bytes = sojourn::encode_bundle(b);
  auto back = sojourn::decode_bundle(bytes);
  REQUIRE(back.ok());
  CHECK(*back == b);
  CHECK(sojourn::bundle_hash(*back) == sojourn::bundle_hash(b));
  CHECK(sojourn::is_bundle_hash(sojourn::bundle_hash(b)));
}

TEST_CASE("any change to code or manifest changes the hash") {
  Bundle b = sample();
  const std::string h = sojourn::bundle_hash(b);
  Bundle code = b;
  code.files["stats.lua"] += " ";
  CHECK(sojourn::bundle_hash(code) != h);
  Bundle quota = b;
  quota.manifest.quotas.cpu_instructions = 1;
  CHECK(sojourn::bundle_hash(quota) != h);
}

TEST_CASE("SHA-256 matches the standard test vector") {
  const std::string abc = "abc";
  std::vector<std::uint8_t> bytes(abc.begin(), abc.end());
  CHECK(sojourn::sha256_hex(bytes) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("bytecode, a missing main file and mangled encodings are refused") {
  auto bc = sojourn::single_file_bundle("x", "\x1bLJ\x02");
  REQUIRE_FALSE(bc.ok());
  CHECK_ERROR(bc, Errc::bad_bundle, "x.lua", "not Lua source text");
  Bundle b = sample();
  b.manifest.main = "other.lua";
  CHECK_ERROR(sojourn::validate_bundle(b), Errc::bad_bundle, "other.lua", "missing");
  auto bytes = sojourn::encode_bundle(sample());
  for (std::size_t cut = 0; cut < bytes.size(); cut += 7) {
    auto r = sojourn::decode_bundle(std::span(bytes.data(), cut));
    CHECK_FALSE(r.ok());
  }
}

TEST_CASE("the manifest's mobility is encoded, hashed and checked, and a weak bundle's encoding is unchanged") {
  Bundle weak = sample();
  const auto weak_bytes = sojourn::encode_bundle(weak);
  // A weak bundle keeps the SJB2 encoding (its hash from before the field existed); the first
  // byte is the portable-binary endianness byte.
  CHECK(std::string(weak_bytes.begin() + 1, weak_bytes.begin() + 5) == "2BJS");
  Bundle strong = weak;
  strong.manifest.mobility = "strong";
  const auto strong_bytes = sojourn::encode_bundle(strong);
  CHECK(std::string(strong_bytes.begin() + 1, strong_bytes.begin() + 5) == "3BJS");
  CHECK(sojourn::bundle_hash(strong) != sojourn::bundle_hash(weak));
  CHECK(sojourn::encode_manifest(strong.manifest) != sojourn::encode_manifest(weak.manifest));
  auto back = sojourn::decode_bundle(strong_bytes);
  REQUIRE(back.ok());
  CHECK(back->manifest.mobility == "strong");
  CHECK(*back == strong);
  auto weak_back = sojourn::decode_bundle(weak_bytes);
  REQUIRE(weak_back.ok());
  CHECK(weak_back->manifest.mobility == "weak");
  Bundle odd = weak;
  odd.manifest.mobility = "sticky";
  CHECK_ERROR(sojourn::validate_bundle(odd), Errc::bad_bundle, "mobility must be weak or strong, not 'sticky'");
  // The strong format naming weak mobility is a second encoding of a weak bundle: refused.
  auto mangled = strong_bytes;
  const std::string needle = "strong";
  auto at = std::search(mangled.begin() + 4, mangled.end(), needle.begin(), needle.end());
  REQUIRE(at != mangled.end());
  std::copy_n("stronk", 6, at);
  CHECK_ERROR(sojourn::decode_bundle(mangled), Errc::bad_bundle, "not a canonical encoding");
}
