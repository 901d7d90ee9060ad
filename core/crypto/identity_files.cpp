// Reading keys and certificates, and the fingerprints that name public keys.
#include <time.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/crypto/identity_openssl.hpp"
#include "sojourn/core/bundle.hpp"

namespace sojourn {

namespace identity_detail {

Error config_error(const std::string& what) { return make_error(Errc::tls_config, "TLS configuration: " + what); }

std::string openssl_error() {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown OpenSSL error";
  const char* reason = ERR_reason_error_string(code);
  if (reason) return reason;
  char text[256];
  ERR_error_string_n(code, text, sizeof text);
  return text;
}

namespace {

Result<std::string> read_pem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return config_error("cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A read-only BIO over `bytes`, which must outlive it.
Bio bio_over(const std::string& bytes) { return Bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size()))); }

std::int64_t unix_time_of(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<std::int64_t>(timegm(&tm));
}

std::string name_entry(X509_NAME* name) {
  int at = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (at < 0) return {};
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, at));
  // SAFETY: ASN1 string bytes viewed as chars of the same size, for their stated length.
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)), static_cast<std::size_t>(ASN1_STRING_length(data)));
}

}  // namespace

Result<X509Ptr> load_certificate(const std::string& path) {
  auto pem = read_pem(path);
  if (!pem) return pem.error();
  X509Ptr cert(PEM_read_bio_X509(bio_over(*pem).get(), nullptr, nullptr, nullptr));
  if (!cert) return config_error(path + " is not a PEM certificate (" + openssl_error() + ")");
  return cert;
}

Result<Pkey> load_private_key(const std::string& path) {
  auto pem = read_pem(path);
  if (!pem) return pem.error();
  Pkey key(PEM_read_bio_PrivateKey(bio_over(*pem).get(), nullptr, nullptr, nullptr));
  if (!key) return config_error(path + " is not a PEM private key (" + openssl_error() + ")");
  return key;
}

CertificateInfo certificate_info(X509* cert) {
  CertificateInfo info;
  info.common_name = name_entry(X509_get_subject_name(cert));
  info.issuer_name = name_entry(X509_get_issuer_name(cert));
  info.fingerprint = public_key_fingerprint(X509_get0_pubkey(cert));
  info.not_before = unix_time_of(X509_get0_notBefore(cert));
  info.not_after = unix_time_of(X509_get0_notAfter(cert));
  info.is_ca = X509_check_ca(cert) > 0;
  return info;
}

}  // namespace identity_detail

using namespace identity_detail;

std::string public_key_fingerprint(const evp_pkey_st* key) {
  if (key == nullptr) return {};
  std::vector<unsigned char> bytes(64);
  std::size_t n = bytes.size();
  if (EVP_PKEY_get_raw_public_key(key, bytes.data(), &n) == 1) {
    bytes.resize(n);
  } else {
    ERR_clear_error();
    unsigned char* der = nullptr;
    int len = i2d_PUBKEY(key, &der);
    if (len <= 0) return {};
    bytes.assign(der, der + len);
    OPENSSL_free(der);
  }
  return sha256_hex(bytes);
}

Result<CertificateInfo> read_certificate(const std::string& path) {
  auto cert = load_certificate(path);
  if (!cert) return cert.error();
  return certificate_info(cert->get());
}

Result<std::string> key_file_fingerprint(const std::string& path) {
  auto pem = read_pem(path);
  if (!pem) return pem.error();
  if (X509Ptr cert{PEM_read_bio_X509(bio_over(*pem).get(), nullptr, nullptr, nullptr)}) {
    return public_key_fingerprint(X509_get0_pubkey(cert.get()));
  }
  if (Pkey key{PEM_read_bio_PrivateKey(bio_over(*pem).get(), nullptr, nullptr, nullptr)}) return public_key_fingerprint(key.get());
  if (Pkey key{PEM_read_bio_PUBKEY(bio_over(*pem).get(), nullptr, nullptr, nullptr)}) return public_key_fingerprint(key.get());
  ERR_clear_error();
  return config_error(path + " holds no PEM certificate, private key or public key");
}

Result<std::string> parse_fingerprint(std::string_view text) {
  std::string_view digits = text;
  if (digits.substr(0, 7) == "sha256:" || digits.substr(0, 7) == "SHA256:") digits.remove_prefix(7);
  std::string out;
  for (char c : digits) {
    if (c == ':') continue;
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return config_error("bad key fingerprint '" + std::string(text) + "': expected 64 hex digits (SHA-256)");
    }
    out += c;
  }
  if (out.size() != 64) return config_error("bad key fingerprint '" + std::string(text) + "': expected 64 hex digits (SHA-256)");
  return out;
}

}  // namespace sojourn
