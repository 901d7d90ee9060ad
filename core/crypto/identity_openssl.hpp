// Internal: RAII holders of OpenSSL objects and the loaders shared by identity.cpp
// (creating keys and certificates) and identity_files.cpp (reading them).
#pragma once

#include <memory>
#include <string>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "sojourn/core/identity.hpp"

namespace sojourn::identity_detail {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

Error config_error(const std::string& what);
// The oldest error on OpenSSL's queue of this thread, as text; clears the queue.
std::string openssl_error();

Result<X509Ptr> load_certificate(const std::string& path);
Result<Pkey> load_private_key(const std::string& path);
CertificateInfo certificate_info(X509* cert);

}  // namespace sojourn::identity_detail
