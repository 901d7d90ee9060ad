// Identities: a CA and the keys and certificates it signs, self-signed ones for pinned
// mode, fingerprints, and what is refused (overwriting, bad names, bad fingerprints).
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <ctime>
#include <filesystem>

#include "sojourn/core/identity.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/transports/tls_support.hpp"

using namespace sojourn;

namespace {
int mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<int>(st.st_mode & 0777);
}
}  // namespace

TEST_CASE("a CA signs an identity: files, modes, names, validity and one fingerprint for key and certificate") {
  test::TempDir dir;
  auto ca = create_ca(dir / "ca", "cluster CA");
  REQUIRE(ca.ok());
  CHECK(ca->certificate.common_name == "cluster CA");
  CHECK(ca->certificate.is_ca);
  CHECK(mode_of(dir / "ca/ca.key") == 0600);
  CHECK(mode_of(dir / "ca") == 0700);

  auto id = create_identity("node-a", dir / "ca", dir / "a");
  REQUIRE(id.ok());
  CHECK(id->key_path == dir / "a/node-a.key");
  CHECK(id->cert_path == dir / "a/node-a.crt");
  CHECK(id->ca_cert_path == dir / "a/ca.crt");
  CHECK(mode_of(id->key_path) == 0600);
  CHECK(id->certificate.common_name == "node-a");
  CHECK(id->certificate.issuer_name == "cluster CA");
  CHECK(!id->certificate.is_ca);
  std::int64_t now = std::time(nullptr);
  CHECK(id->certificate.not_before <= now);
  CHECK(id->certificate.not_after > now + 364 * 86400);
  auto from_key = key_file_fingerprint(id->key_path);
  auto from_cert = key_file_fingerprint(id->cert_path);
  REQUIRE(from_key.ok());
  REQUIRE(from_cert.ok());
  CHECK(*from_key == *from_cert);
  CHECK(*from_key == id->certificate.fingerprint);
  CHECK(from_key->size() == 64);
  CHECK(*from_key != ca->certificate.fingerprint);
}

TEST_CASE("a self-signed identity is its own issuer; an expired one can be made for tests") {
  test::TempDir dir;
  auto id = create_identity("solo", "", dir / "solo");
  REQUIRE(id.ok());
  CHECK(id->ca_cert_path.empty());
  CHECK(id->certificate.issuer_name == "solo");
  CHECK(!std::filesystem::exists(dir / "solo/ca.crt"));
  auto old = create_identity("old", "", dir / "old", Validity{-std::chrono::hours(48), -std::chrono::hours(24)});
  REQUIRE(old.ok());
  CHECK(old->certificate.not_after < std::time(nullptr));
}

TEST_CASE("nothing is overwritten, bad names and missing CAs are refused with the reason") {
  test::TempDir dir;
  REQUIRE(create_ca(dir / "ca", "ca").ok());
  auto again = create_ca(dir / "ca", "ca");
  REQUIRE(!again.ok());
  CHECK(again.error().code == Errc::tls_config);
  CHECK_ERROR(again, Errc::tls_config, dir / "ca/ca.key", "exists already");
  REQUIRE(create_identity("a", dir / "ca", dir / "a").ok());
  auto twice = create_identity("a", dir / "ca", dir / "a");
  REQUIRE(!twice.ok());
  CHECK_ERROR(twice, Errc::tls_config, dir / "a/a.key", "exists already");
  for (const char* bad : {"", "../x", ".hidden", "ca", "a b"}) {
    auto r = create_identity(bad, dir / "ca", dir / "x");
    REQUIRE(!r.ok());
    CHECK(r.error().message.find("bad identity name") != std::string::npos);
  }
  // A second identity in the same directory keeps its CA; one of another CA is refused there,
  // and leaves no key behind.
  REQUIRE(create_identity("a2", dir / "ca", dir / "a").ok());
  REQUIRE(create_ca(dir / "other", "other").ok());
  auto foreign = create_identity("c", dir / "other", dir / "a");
  REQUIRE(!foreign.ok());
  CHECK_ERROR(foreign, Errc::tls_config, dir / "a/ca.crt", "another CA");
  CHECK_FALSE(std::filesystem::exists(dir / "a/c.key"));
  auto no_ca = create_identity("b", dir / "nowhere", dir / "b");
  REQUIRE(!no_ca.ok());
  CHECK_ERROR(no_ca, Errc::tls_config, "cannot read " + (dir / "nowhere/ca.crt"));
}

TEST_CASE("fingerprints are read as users write them, and refused when malformed") {
  std::string hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
  CHECK(*parse_fingerprint(hex) == hex);
  CHECK(*parse_fingerprint("SHA256:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF") == hex);
  auto short_one = parse_fingerprint("abcd");
  REQUIRE(!short_one.ok());
  CHECK_ERROR(short_one, Errc::tls_config, "fingerprint 'abcd'", "64 hex digits");
  CHECK(!parse_fingerprint(std::string(64, 'g')).ok());
}
