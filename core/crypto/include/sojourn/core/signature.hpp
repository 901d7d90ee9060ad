// Ed25519 signatures (OpenSSL libcrypto): author keys sign code bundles (hash + manifest,
// quotas included) and remote evaluations (chunk, limits, nonce, expiry). Keys are the
// PEM PKCS#8 files `sojourn keygen` writes. See docs/security.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sojourn/core/bundle.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"

namespace sojourn {

inline constexpr std::size_t kPublicKeyBytes = 32;
inline constexpr std::size_t kSignatureBytes = 64;

// Lowercase hex SHA-256 of a raw 32-byte public key: how policies and logs name a signer.
std::string key_fingerprint(std::string_view public_key);
// A fingerprint as key_fingerprint prints it: 64 lowercase hex digits.
bool is_key_fingerprint(std::string_view text);

// An Ed25519 private key. Copies share the key. Errors: bad_key "bad key: ...".
class SigningKey {
 public:
  // PEM text of a PKCS#8 "PRIVATE KEY" holding an Ed25519 key.
  static Result<SigningKey> from_pem(std::string_view pem);
  // From a PEM file: bad_key "bad key: cannot read PATH" or "bad key: PATH: ...".
  static Result<SigningKey> load(const std::string& path);
  // A fresh random key (tests, benchmarks).
  static Result<SigningKey> generate();

  std::string to_pem() const;  // PKCS#8 PEM, unencrypted
  const std::string& public_key() const { return public_key_; }    // raw, 32 bytes
  const std::string& fingerprint() const { return fingerprint_; }  // key_fingerprint(public_key())
  std::string sign(std::span<const std::uint8_t> message) const;   // raw, 64 bytes

 private:
  struct Holder;
  // A signing key over the private key `holder` owns, with its public half and fingerprint.
  static Result<SigningKey> adopt(std::shared_ptr<Holder> holder);
  std::shared_ptr<Holder> key_;
  std::string public_key_;
  std::string fingerprint_;
};

// The raw Ed25519 public key in PEM text: a "PUBLIC KEY", a "CERTIFICATE" (its subject's
// key) or a "PRIVATE KEY". bad_key "bad key: no Ed25519 public key, certificate or private key in the PEM text".
Result<std::string> public_key_from_pem(std::string_view pem);

// bad_signature: "bad signature: a public key has 32 bytes, not N", "bad signature: a
// signature has 64 bytes, not N", "bad signature: it does not verify with key FPR16"
// (FPR16: the first 16 hex digits of the key's fingerprint).
Result<void> verify_signature(std::string_view public_key, std::span<const std::uint8_t> message,
                              std::string_view signature);

// A code bundle's signature: made by its author over a domain-separated message of the
// bundle hash and the canonical manifest, so neither code nor quotas can change under it.
struct BundleSignature {
  std::string public_key;  // raw, 32 bytes; empty: unsigned
  std::string signature;   // raw, 64 bytes
  bool is_signed() const { return !public_key.empty(); }
  friend bool operator==(const BundleSignature&, const BundleSignature&) = default;
};

std::vector<std::uint8_t> bundle_signing_message(std::string_view bundle_hash, const BundleManifest& manifest);
BundleSignature sign_bundle(const SigningKey& key, const Bundle& bundle);
// bad_signature "bad signature: bundle HASH12 (NAME) is not what key FPR16 signed (code or
// manifest changed?)", or one of verify_signature's.
Result<void> verify_bundle_signature(const BundleSignature& signature, std::string_view bundle_hash,
                                     const BundleManifest& manifest);

// Bundles verified on this node, by (bundle hash, signer key): each is verified once.
// The caller vouches that `manifest` is the one `bundle_hash` names (a bundle taken from
// the code cache, whose hash was checked). Only successes are kept. Thread-safe.
class SignatureCache {
 public:
  explicit SignatureCache(std::size_t capacity = 8192) : capacity_(capacity) {}
  Result<void> verify(const BundleSignature& signature, std::string_view bundle_hash, const BundleManifest& manifest);
  std::uint64_t verifications() const;  // signatures actually checked (cache misses)

 private:
  std::size_t capacity_;
  mutable std::mutex mutex_;
  std::set<std::pair<std::string, std::string>> verified_;  // (hash, public key)
  std::uint64_t verifications_ = 0;
};

// Remote evaluations. A signed EvalRequest carries its signer's key, a random nonce and an
// expiry time; the signature covers the chunk, its name, args, limits, isolation, destination
// node, nonce and expiry. sign_eval fills those fields (expiry = now + ttl).
std::vector<std::uint8_t> eval_signing_message(const EvalRequest& request);
void sign_eval(EvalRequest& request, const SigningKey& key, std::chrono::milliseconds ttl);
// verify_signature's errors for a signed request; ok for an unsigned one (no signer).
Result<void> verify_eval_signature(const EvalRequest& request);

// 16 random bytes as 32 hex digits (nonces).
std::string random_nonce();

}  // namespace sojourn
