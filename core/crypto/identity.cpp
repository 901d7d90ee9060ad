// Creating a CA and identities: Ed25519 keys, X.509 v3 certificates, files written
// exclusively (never over an existing one) with private keys at mode 0600.
#include "sojourn/core/identity.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "core/crypto/identity_openssl.hpp"

namespace sojourn {

using namespace identity_detail;

namespace {

Result<void> write_new_file(const std::string& path, const std::string& bytes, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST) return config_error(path + " exists already; remove it first or choose another name");
    return config_error("cannot create " + path + ": " + std::strerror(errno));
  }
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(path.c_str());
      return config_error("cannot write " + path + ": " + why);
    }
    done += static_cast<std::size_t>(n);
  }
  ::fchmod(fd, mode);  // the umask may have taken bits away; the mode is the point
  ::close(fd);
  return {};
}

Result<void> make_directory(const std::string& dir) {
  if (dir.empty()) return config_error("empty directory name");
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return config_error(dir + " is not a directory");
    return {};
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return config_error("cannot create directory " + dir + ": " + ec.message());
  ::chmod(dir.c_str(), 0700);
  return {};
}

Result<std::string> pem_of(int (*writer)(BIO*, void*), void* object, const std::string& what) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || writer(bio.get(), object) != 1) return config_error("cannot encode " + what + ": " + openssl_error());
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

Result<Pkey> new_ed25519_key() {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  if (!key) return config_error("cannot generate an Ed25519 key: " + openssl_error());
  return Pkey(key);
}

bool add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (!ext) return false;
  bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// A certificate for `key` named `name`, signed by `issuer_key` (issuer_cert null: self-signed).
Result<X509Ptr> issue(const std::string& name, EVP_PKEY* key, bool is_ca, X509* issuer_cert, EVP_PKEY* issuer_key,
                      const Validity& validity) {
  X509Ptr cert(X509_new());
  if (!cert) return config_error("cannot create a certificate: " + openssl_error());
  unsigned char serial_bytes[16];
  if (RAND_bytes(serial_bytes, sizeof serial_bytes) != 1) return config_error("no randomness for a serial number");
  serial_bytes[0] &= 0x7f;  // a positive serial number
  BIGNUM* serial = BN_bin2bn(serial_bytes, sizeof serial_bytes, nullptr);
  bool ok = serial && BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert.get())) != nullptr;
  BN_free(serial);
  X509_NAME* subject = X509_get_subject_name(cert.get());
  // SAFETY: OpenSSL's API takes the name bytes as unsigned char; same size and layout as char.
  auto bytes = reinterpret_cast<const unsigned char*>(name.c_str());
  ok = ok && X509_set_version(cert.get(), 2) == 1 &&
       X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, bytes, -1, -1, 0) == 1 &&
       X509_set_issuer_name(cert.get(), issuer_cert ? X509_get_subject_name(issuer_cert) : subject) == 1 &&
       X509_gmtime_adj(X509_getm_notBefore(cert.get()), static_cast<long>(validity.not_before.count())) != nullptr &&
       X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(validity.not_after.count())) != nullptr &&
       X509_set_pubkey(cert.get(), key) == 1;
  X509* issuer = issuer_cert ? issuer_cert : cert.get();
  ok = ok && add_extension(cert.get(), issuer, NID_subject_key_identifier, "hash");
  if (is_ca) {
    ok = ok && add_extension(cert.get(), issuer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
         add_extension(cert.get(), issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    ok = ok && add_extension(cert.get(), issuer, NID_basic_constraints, "critical,CA:FALSE") &&
         add_extension(cert.get(), issuer, NID_key_usage, "critical,digitalSignature") &&
         add_extension(cert.get(), issuer, NID_ext_key_usage, "serverAuth,clientAuth");
  }
  if (issuer_cert) ok = ok && add_extension(cert.get(), issuer, NID_authority_key_identifier, "keyid:always");
  // Ed25519 signs the message itself: no separate digest.
  ok = ok && X509_sign(cert.get(), issuer_key, nullptr) > 0;
  if (!ok) return config_error("cannot make the certificate of '" + name + "': " + openssl_error());
  return cert;
}

Result<IdentityFiles> write_pair(const std::string& key_path, const std::string& cert_path, EVP_PKEY* key, X509* cert) {
  auto key_pem = pem_of(
      [](BIO* b, void* k) { return PEM_write_bio_PrivateKey(b, static_cast<EVP_PKEY*>(k), nullptr, nullptr, 0, nullptr, nullptr); },
      key, "the private key");
  if (!key_pem) return key_pem.error();
  auto cert_pem = pem_of([](BIO* b, void* c) { return PEM_write_bio_X509(b, static_cast<X509*>(c)); }, cert, "the certificate");
  if (!cert_pem) return cert_pem.error();
  // Both names are checked before either is written: no half-made identity.
  for (const auto& p : {key_path, cert_path}) {
    if (::access(p.c_str(), F_OK) == 0) return config_error(p + " exists already; remove it first or choose another name");
  }
  if (auto w = write_new_file(key_path, *key_pem, 0600); !w) return w.error();
  if (auto w = write_new_file(cert_path, *cert_pem, 0644); !w) {
    ::unlink(key_path.c_str());
    return w.error();
  }
  IdentityFiles files;
  files.key_path = key_path;
  files.cert_path = cert_path;
  files.certificate = certificate_info(cert);
  return files;
}

std::string join(const std::string& dir, const std::string& file) { return (std::filesystem::path(dir) / file).string(); }

}  // namespace

bool valid_identity_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name.front() == '.' || name == "ca") return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Result<IdentityFiles> create_ca(const std::string& dir, const std::string& name, Validity validity) {
  if (name.empty() || name.size() > 64) return config_error("a CA name must have 1 to 64 characters");
  if (auto d = make_directory(dir); !d) return d.error();
  auto key = new_ed25519_key();
  if (!key) return key.error();
  auto cert = issue(name, key->get(), true, nullptr, key->get(), validity);
  if (!cert) return cert.error();
  auto files = write_pair(join(dir, "ca.key"), join(dir, "ca.crt"), key->get(), cert->get());
  if (files) files->ca_cert_path = files->cert_path;
  return files;
}

namespace {
bool same_contents(const std::string& a, const std::string& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa || !fb) return false;
  const std::string ca((std::istreambuf_iterator<char>(fa)), std::istreambuf_iterator<char>());
  const std::string cb((std::istreambuf_iterator<char>(fb)), std::istreambuf_iterator<char>());
  return ca == cb;
}
}  // namespace

Result<IdentityFiles> create_identity(const std::string& name, const std::string& ca_dir, const std::string& out_dir,
                                      Validity validity) {
  if (!valid_identity_name(name)) {
    return config_error("bad identity name '" + name + "': use 1-64 of A-Z a-z 0-9 . _ -, not starting with '.', not 'ca'");
  }
  X509Ptr ca_cert;
  Pkey ca_key;
  if (!ca_dir.empty()) {
    auto c = load_certificate(join(ca_dir, "ca.crt"));
    if (!c) return c.error();
    auto k = load_private_key(join(ca_dir, "ca.key"));
    if (!k) return k.error();
    if (X509_check_private_key(c->get(), k->get()) != 1) {
      return config_error(join(ca_dir, "ca.key") + " does not match " + join(ca_dir, "ca.crt"));
    }
    ca_cert = std::move(*c);
    ca_key = std::move(*k);
  }
  if (auto d = make_directory(out_dir); !d) return d.error();
  // The TLS directory of this identity trusts the CA that signed it: a ca.crt of another CA
  // already there is never replaced (other identities in that directory trust it).
  std::error_code ec;
  const std::string ca_copy = join(out_dir, "ca.crt");
  const bool copy_ca = !ca_dir.empty() && !std::filesystem::equivalent(ca_dir, out_dir, ec);
  if (copy_ca && std::filesystem::exists(ca_copy) && !same_contents(ca_copy, join(ca_dir, "ca.crt"))) {
    return config_error(ca_copy + " is the certificate of another CA; use another --out directory");
  }
  auto key = new_ed25519_key();
  if (!key) return key.error();
  auto cert = issue(name, key->get(), false, ca_cert.get(), ca_cert ? ca_key.get() : key->get(), validity);
  if (!cert) return cert.error();
  auto files = write_pair(join(out_dir, name + ".key"), join(out_dir, name + ".crt"), key->get(), cert->get());
  if (!files || ca_dir.empty()) return files;
  if (copy_ca) {
    std::filesystem::copy_file(join(ca_dir, "ca.crt"), ca_copy, std::filesystem::copy_options::skip_existing, ec);
    if (ec) {
      // No half-made identity: the pair goes too.
      ::unlink(files->key_path.c_str());
      ::unlink(files->cert_path.c_str());
      return config_error("cannot copy the CA certificate to " + ca_copy + ": " + ec.message());
    }
  }
  files->ca_cert_path = ca_copy;
  return files;
}

}  // namespace sojourn
