// Ed25519 keys and signatures: PEM files as OpenSSL writes them, bundle signatures over the
// hash and manifest, the verified-bundle cache, signed remote evaluations.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "sojourn/core/signature.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;

namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/sojourn-sig-XXXXXX";
  const char* dir = ::mkdtemp(tmpl);
  REQUIRE(dir != nullptr);
  return dir;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Bundle sample_bundle() {
  auto b = single_file_bundle("courier", "function start(s) return 1 end", {"start"});
  REQUIRE(b.ok());
  b->manifest.quotas.cpu_instructions = 50'000;
  b->manifest.cpu_budget = 200'000;
  b->manifest.max_hops = 4;
  return *b;
}

}  // namespace

TEST_CASE("a key written by the openssl command signs, and its certificate and public key name the same key") {
  const std::string dir = temp_dir();
  const std::string key = dir + "/alice.key";
  // The same files `sojourn keygen` writes: an Ed25519 PKCS#8 PEM key and an X.509 certificate.
  REQUIRE_MESSAGE(std::system("command -v openssl >/dev/null") == 0,
                  "the openssl command is missing: install the Debian package openssl (bootstrap.sh does)");
  REQUIRE(std::system(("openssl genpkey -algorithm ed25519 -out " + key + " 2>/dev/null").c_str()) == 0);
  REQUIRE(std::system(("openssl pkey -in " + key + " -pubout -out " + dir + "/alice.pub 2>/dev/null").c_str()) == 0);
  REQUIRE(std::system(("openssl req -new -x509 -key " + key + " -subj /CN=alice -days 1 -out " + dir +
                       "/alice.crt 2>/dev/null").c_str()) == 0);
  auto signing = SigningKey::load(key);
  REQUIRE(signing.ok());
  CHECK(signing->public_key().size() == 32);
  CHECK(signing->fingerprint() == key_fingerprint(signing->public_key()));
  CHECK(is_key_fingerprint(signing->fingerprint()));
  auto from_pub = public_key_from_pem(slurp(dir + "/alice.pub"));
  auto from_crt = public_key_from_pem(slurp(dir + "/alice.crt"));
  auto from_key = public_key_from_pem(slurp(key));
  REQUIRE(from_pub.ok());
  REQUIRE(from_crt.ok());
  REQUIRE(from_key.ok());
  CHECK(*from_pub == signing->public_key());
  CHECK(*from_crt == signing->public_key());
  CHECK(*from_key == signing->public_key());

  const std::string text = "a message";
  std::vector<std::uint8_t> message(text.begin(), text.end());
  std::string sig = signing->sign(message);
  CHECK(sig.size() == 64);
  CHECK(verify_signature(signing->public_key(), message, sig).ok());
  message[0] ^= 1;
  auto bad = verify_signature(signing->public_key(), message, sig);
  REQUIRE_FALSE(bad.ok());
  CHECK_ERROR(bad, Errc::bad_signature, "does not verify", signing->fingerprint().substr(0, 16));
  std::filesystem::remove_all(dir);
}

TEST_CASE("unusable keys and malformed signatures are refused with clear errors") {
  auto missing = SigningKey::load("/nonexistent/key.pem");
  REQUIRE_FALSE(missing.ok());
  CHECK_ERROR(missing, Errc::bad_key, "/nonexistent/key.pem");
  auto garbage = SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  REQUIRE_FALSE(garbage.ok());
  CHECK_ERROR(garbage, Errc::bad_key, "no PEM private key");
  auto none = public_key_from_pem("hello");
  REQUIRE_FALSE(none.ok());
  CHECK_ERROR(none, Errc::bad_key, "no Ed25519 public key");
  std::vector<std::uint8_t> m{1, 2, 3};
  CHECK_ERROR(verify_signature("short", m, std::string(64, 'x')), Errc::bad_signature, "public key", "not 5");
  CHECK_ERROR(verify_signature(std::string(32, 'k'), m, "sig"), Errc::bad_signature, "a signature", "not 3");
}

TEST_CASE("a bundle signature covers the code and the manifest: one changed byte or quota is refused") {
  auto key = SigningKey::generate();
  REQUIRE(key.ok());
  Bundle b = sample_bundle();
  BundleSignature s = sign_bundle(*key, b);
  CHECK(verify_bundle_signature(s, bundle_hash(b), b.manifest).ok());

  Bundle code = b;
  code.files.begin()->second[10] ^= 1;  // one byte of the source
  auto r1 = verify_bundle_signature(s, bundle_hash(code), code.manifest);
  REQUIRE_FALSE(r1.ok());
  CHECK_ERROR(r1, Errc::bad_signature, "bundle " + bundle_hash(code).substr(0, 12), "(courier)",
              key->fingerprint().substr(0, 16));

  Bundle quotas = b;
  quotas.manifest.cpu_budget = 10'000'000;  // a bigger budget than the owner signed
  CHECK(verify_bundle_signature(s, bundle_hash(quotas), quotas.manifest).error().code == Errc::bad_signature);
  // The hash alone is not enough: the manifest is part of the signed message too.
  CHECK_FALSE(verify_bundle_signature(s, bundle_hash(b), quotas.manifest).ok());

  // Another key's signature does not pass for the author's.
  auto other = SigningKey::generate();
  REQUIRE(other.ok());
  BundleSignature forged{key->public_key(), other->sign(bundle_signing_message(bundle_hash(b), b.manifest))};
  CHECK_FALSE(verify_bundle_signature(forged, bundle_hash(b), b.manifest).ok());
}

TEST_CASE("the signature cache verifies a bundle once per signer and never keeps a failure") {
  auto key = SigningKey::generate();
  REQUIRE(key.ok());
  Bundle b = sample_bundle();
  const std::string hash = bundle_hash(b);
  BundleSignature s = sign_bundle(*key, b);
  SignatureCache cache;
  BundleSignature wrong = s;
  wrong.signature[0] ^= 1;
  CHECK_FALSE(cache.verify(wrong, hash, b.manifest).ok());
  CHECK_FALSE(cache.verify(wrong, hash, b.manifest).ok());
  CHECK(cache.verifications() == 2);
  CHECK(cache.verify(s, hash, b.manifest).ok());
  CHECK(cache.verify(s, hash, b.manifest).ok());
  CHECK(cache.verify(s, hash, b.manifest).ok());
  CHECK(cache.verifications() == 3);
}

TEST_CASE("a signed evaluation covers its chunk, args, limits, nonce and expiry, and survives the wire") {
  auto key = SigningKey::generate();
  REQUIRE(key.ok());
  EvalRequest e;
  e.source = "return ...";
  e.chunk_name = "job";
  e.args = Value::array({1, "two", Value::array({3})});
  e.limits = Limits{1000, 1 << 20, 100};
  sign_eval(e, *key, std::chrono::seconds(30));
  CHECK(e.nonce.size() == 32);
  CHECK(e.expires_unix_ms > 0);
  auto decoded = decode_eval(encode(e));
  REQUIRE(decoded.ok());
  CHECK(verify_eval_signature(*decoded).ok());
  for (int field = 0; field < 5; ++field) {
    EvalRequest t = *decoded;
    if (field == 0) t.source = "return 666";
    if (field == 1) t.limits.cpu_instructions = 2'000'000'000;
    if (field == 2) t.expires_unix_ms += 3'600'000;
    if (field == 3) t.nonce[0] = t.nonce[0] == 'a' ? 'b' : 'a';
    if (field == 4) t.args = Value::array({2});
    CAPTURE(field);
    auto r = verify_eval_signature(t);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::bad_signature);
  }
  EvalRequest unsigned_request;
  unsigned_request.source = "return 1";
  CHECK(verify_eval_signature(unsigned_request).ok());
}
