// Keys and certificates of nodes and code authors: a cluster CA, Ed25519 keys in PEM
// PKCS#8 files (mode 0600) and X.509 certificates signed by the CA, or self-signed for
// pinned-key set-ups without a CA. `sojourn ca init` and `sojourn keygen` are these
// functions; TLS loads what they write, and an author key signs code with the same files.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "sojourn/core/error.hpp"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace sojourn {

struct CertificateInfo {
  std::string common_name;
  std::string issuer_name;
  std::string fingerprint;  // of its public key, see public_key_fingerprint
  std::int64_t not_before = 0, not_after = 0;  // seconds since the Unix epoch
  bool is_ca = false;
};

// What ca init / keygen wrote.
struct IdentityFiles {
  std::string key_path, cert_path;
  std::string ca_cert_path;  // empty for a self-signed certificate
  CertificateInfo certificate;
};

// A certificate's validity, relative to now. The default start lies five minutes back
// for clocks a little behind; a negative end makes an expired certificate (for tests).
struct Validity {
  std::chrono::seconds not_before{-300};
  std::chrono::seconds not_after{std::chrono::hours(24 * 365)};
};

// Creates DIR (mode 0700 when new) with ca.key and ca.crt: a self-signed CA named `name`.
// Never overwrites: existing files are an error. Errors: tls_config.
Result<IdentityFiles> create_ca(const std::string& dir, const std::string& name, Validity validity = {});

// Creates OUT/NAME.key (a new Ed25519 key) and OUT/NAME.crt with CN=NAME, signed by the CA
// in `ca_dir` (whose ca.crt is copied to OUT/ca.crt when OUT is another directory), or
// self-signed when `ca_dir` is empty. OUT is created (mode 0700) when missing. NAME is
// 1-64 of [A-Za-z0-9._-], not starting with '.', and not "ca". Errors: tls_config.
Result<IdentityFiles> create_identity(const std::string& name, const std::string& ca_dir, const std::string& out_dir,
                                      Validity validity = {});

// Reads a PEM certificate. Errors: tls_config.
Result<CertificateInfo> read_certificate(const std::string& path);

// The fingerprint of the public key in a PEM certificate, private key or public key file.
Result<std::string> key_file_fingerprint(const std::string& path);

// Lowercase hex SHA-256 of the raw public key (32 bytes for Ed25519); for key types
// without a raw form, of its DER SubjectPublicKeyInfo.
std::string public_key_fingerprint(const evp_pkey_st* key);

// A fingerprint as a user writes it ("sha256:AB:CD:...", upper or lower case, with or
// without colons) as 64 lowercase hex digits. Errors: tls_config.
Result<std::string> parse_fingerprint(std::string_view text);

// Is `name` usable as an identity's file name and common name?
bool valid_identity_name(std::string_view name);

}  // namespace sojourn
