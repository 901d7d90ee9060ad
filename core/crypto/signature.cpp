// Ed25519 keys, signatures and the verified-bundle cache, over OpenSSL's EVP interface.
#include "sojourn/core/signature.hpp"

#include <atomic>
#include <fstream>
#include <initializer_list>
#include <sstream>

#include <pthread.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "core/crypto/identity_openssl.hpp"
#include "core/wire_io.hpp"

namespace sojourn {

namespace {

// Domain separation: a signature over one kind of message never passes for another.
constexpr std::string_view kBundleDomain{"sojourn bundle signature v1\0", 28};
constexpr std::string_view kEvalDomain{"sojourn eval signature v1\0", 26};

using identity_detail::Bio;
using identity_detail::openssl_error;
using identity_detail::Pkey;
using identity_detail::X509Ptr;
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};


std::span<const std::uint8_t> as_bytes(std::string_view s) {
  // SAFETY: the chars are read as unsigned bytes of the same size, for as long as `s` lives.
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

Bio memory_bio(std::string_view text) {
  return Bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

Result<std::string> raw_public_key(EVP_PKEY* key) {
  if (EVP_PKEY_id(key) != EVP_PKEY_ED25519) return make_error(Errc::bad_key, "bad key: not an Ed25519 key");
  unsigned char raw[kPublicKeyBytes];
  std::size_t length = sizeof raw;
  if (EVP_PKEY_get_raw_public_key(key, raw, &length) != 1 || length != kPublicKeyBytes) {
    return make_error(Errc::bad_key, "bad key: cannot read the public key: " + openssl_error());
  }
  // SAFETY: `raw` holds `length` initialised bytes.
  return std::string(reinterpret_cast<const char*>(raw), length);
}

// The domain tag, then the parts, in one buffer.
std::vector<std::uint8_t> tagged(std::string_view domain, std::initializer_list<std::span<const std::uint8_t>> parts) {
  std::size_t total = domain.size();
  for (auto p : parts) total += p.size();
  std::vector<std::uint8_t> m;
  m.reserve(total);
  for (char c : domain) m.push_back(static_cast<std::uint8_t>(c));
  for (auto p : parts) m.insert(m.end(), p.begin(), p.end());
  return m;
}

std::string short_fingerprint(std::string_view public_key) { return key_fingerprint(public_key).substr(0, 16); }


}  // namespace

std::string key_fingerprint(std::string_view public_key) { return sha256_hex(as_bytes(public_key)); }

bool is_key_fingerprint(std::string_view text) { return is_bundle_hash(text); }

struct SigningKey::Holder {
  Pkey key;
};

Result<SigningKey> SigningKey::adopt(std::shared_ptr<Holder> holder) {
  auto pub = raw_public_key(holder->key.get());
  if (!pub) return pub.error();
  SigningKey k;
  k.key_ = std::move(holder);
  k.public_key_ = std::move(*pub);
  k.fingerprint_ = key_fingerprint(k.public_key_);
  return k;
}

Result<SigningKey> SigningKey::from_pem(std::string_view pem) {
  auto bio = memory_bio(pem);
  Pkey key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key) {
    ERR_clear_error();
    return make_error(Errc::bad_key, "bad key: no PEM private key");
  }
  return adopt(std::make_shared<Holder>(Holder{std::move(key)}));
}

Result<SigningKey> SigningKey::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(Errc::bad_key, "bad key: cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  auto key = from_pem(text.str());
  if (!key) return make_error(Errc::bad_key, "bad key: " + path + ": " + key.error().message.substr(9));
  return key;
}

Result<SigningKey> SigningKey::generate() {
  EVP_PKEY* raw = nullptr;
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr),
                                                                  EVP_PKEY_CTX_free);
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    return make_error(Errc::bad_key, "bad key: cannot generate an Ed25519 key: " + openssl_error());
  }
  Pkey key(raw);
  return adopt(std::make_shared<Holder>(Holder{std::move(key)}));
}

std::string SigningKey::to_pem() const {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key_->key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw std::runtime_error("cannot write a PEM key: " + openssl_error());
  }
  char* data = nullptr;
  long length = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(length));
}

std::string SigningKey::sign(std::span<const std::uint8_t> message) const {
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  unsigned char sig[kSignatureBytes];
  std::size_t length = sizeof sig;
  // Ed25519 is one-shot (no digest of its own): EVP_DigestSign with a null digest.
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_->key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), sig, &length, message.data(), message.size()) != 1) {
    throw std::runtime_error("Ed25519 signing failed: " + openssl_error());
  }
  // SAFETY: `sig` holds `length` initialised bytes.
  return std::string(reinterpret_cast<const char*>(sig), length);
}

Result<std::string> public_key_from_pem(std::string_view pem) {
  const Error none = make_error(Errc::bad_key, "bad key: no Ed25519 public key, certificate or private key in the PEM text");
  if (pem.find("-----BEGIN CERTIFICATE-----") != std::string_view::npos) {
    auto bio = memory_bio(pem);
    X509Ptr cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    Pkey key(cert ? X509_get_pubkey(cert.get()) : nullptr);
    ERR_clear_error();
    if (!key) return none;
    return raw_public_key(key.get());
  }
  if (pem.find("-----BEGIN PUBLIC KEY-----") != std::string_view::npos) {
    auto bio = memory_bio(pem);
    Pkey key(bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    ERR_clear_error();
    if (!key) return none;
    return raw_public_key(key.get());
  }
  auto key = SigningKey::from_pem(pem);
  if (!key) return none;
  return key->public_key();
}

Result<void> verify_signature(std::string_view public_key, std::span<const std::uint8_t> message,
                              std::string_view signature) {
  if (public_key.size() != kPublicKeyBytes) {
    return make_error(Errc::bad_signature, "bad signature: a public key has 32 bytes, not " + std::to_string(public_key.size()));
  }
  if (signature.size() != kSignatureBytes) {
    return make_error(Errc::bad_signature, "bad signature: a signature has 64 bytes, not " + std::to_string(signature.size()));
  }
  auto pk = as_bytes(public_key);
  Pkey key(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, pk.data(), pk.size()));
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  auto sig = as_bytes(signature);
  const bool good = key && ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) == 1 &&
                    EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), message.data(), message.size()) == 1;
  ERR_clear_error();
  if (!good) {
    return make_error(Errc::bad_signature, "bad signature: it does not verify with key " + short_fingerprint(public_key));
  }
  return {};
}

std::vector<std::uint8_t> bundle_signing_message(std::string_view bundle_hash, const BundleManifest& manifest) {
  std::vector<std::uint8_t> encoded = encode_manifest(manifest);
  return tagged(kBundleDomain, {as_bytes(bundle_hash), encoded});
}

BundleSignature sign_bundle(const SigningKey& key, const Bundle& bundle) {
  BundleSignature s;
  s.public_key = key.public_key();
  s.signature = key.sign(bundle_signing_message(bundle_hash(bundle), bundle.manifest));
  return s;
}

Result<void> verify_bundle_signature(const BundleSignature& signature, std::string_view bundle_hash,
                                     const BundleManifest& manifest) {
  auto r = verify_signature(signature.public_key, bundle_signing_message(bundle_hash, manifest), signature.signature);
  if (!r && signature.public_key.size() == kPublicKeyBytes && signature.signature.size() == kSignatureBytes) {
    return make_error(Errc::bad_signature, "bad signature: bundle " + std::string(bundle_hash.substr(0, 12)) + " (" +
                                               manifest.name + ") is not what key " + short_fingerprint(signature.public_key) +
                                               " signed (code or manifest changed?)");
  }
  return r;
}

Result<void> SignatureCache::verify(const BundleSignature& signature, std::string_view bundle_hash,
                                    const BundleManifest& manifest) {
  auto key = std::make_pair(std::string(bundle_hash), signature.public_key);
  {
    std::lock_guard lock(mutex_);
    if (verified_.count(key) != 0) return {};
    ++verifications_;
  }
  auto r = verify_bundle_signature(signature, bundle_hash, manifest);
  if (!r) return r;
  std::lock_guard lock(mutex_);
  if (verified_.size() >= capacity_) verified_.clear();  // rare; a miss only costs one verification
  verified_.insert(std::move(key));
  return {};
}

std::uint64_t SignatureCache::verifications() const {
  std::lock_guard lock(mutex_);
  return verifications_;
}

std::vector<std::uint8_t> eval_signing_message(const EvalRequest& request) {
  wire::Writer w;
  wire::write_eval_fields(w, request, /*with_signature=*/false);
  std::vector<std::uint8_t> body = w.take();
  return tagged(kEvalDomain, {body});
}

void sign_eval(EvalRequest& request, const SigningKey& key, std::chrono::milliseconds ttl) {
  request.signer = key.public_key();
  request.nonce = random_nonce();
  request.expires_unix_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch() + ttl).count();
  request.signature = key.sign(eval_signing_message(request));
}

Result<void> verify_eval_signature(const EvalRequest& request) {
  if (request.signer.empty()) return {};
  return verify_signature(request.signer, eval_signing_message(request), request.signature);
}

namespace {
// Bumped in a forked child: a buffer of random bytes inherited from the parent is never used
// there (the parent hands out the same bytes).
std::atomic<std::uint64_t> fork_generation{0};
void note_fork_in_child() { fork_generation.fetch_add(1, std::memory_order_relaxed); }
}  // namespace

std::string random_nonce() {
  // Nonces are drawn from the CSPRNG 32 at a time, per thread: each RAND_bytes call costs a
  // few microseconds (its per-thread DRBG lookup and locks), and a hop takes two nonces.
  constexpr std::size_t kNonceBytes = 16, kBatch = 32;
  struct Buffer {
    unsigned char bytes[kNonceBytes * kBatch];
    std::size_t next = kBatch;  // empty
    std::uint64_t generation = 0;
  };
  static const bool registered = [] { return pthread_atfork(nullptr, nullptr, note_fork_in_child) == 0; }();
  thread_local Buffer buffer;
  const std::uint64_t generation = fork_generation.load(std::memory_order_relaxed);
  if (!registered || buffer.next == kBatch || buffer.generation != generation) {
    if (RAND_bytes(buffer.bytes, sizeof buffer.bytes) != 1) throw std::runtime_error("no randomness for a nonce");
    buffer.next = 0;
    buffer.generation = generation;
  }
  unsigned char* nonce = buffer.bytes + buffer.next * kNonceBytes;
  ++buffer.next;
  std::string text = hex_encode(std::span<const std::uint8_t>(nonce, kNonceBytes));
  OPENSSL_cleanse(nonce, kNonceBytes);  // a used nonce stays nowhere but in its string
  return text;
}

}  // namespace sojourn
