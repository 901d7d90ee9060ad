// Loading a node's TLS identity and trust anchors into OpenSSL contexts (TLS 1.3 only,
// certificates required both ways), checking a peer's certificate, naming what failed.
#include "transports/tls_context.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <filesystem>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "sojourn/core/identity.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/transports/address.hpp"

namespace sojourn {

namespace {

Error config_error(const std::string& what) { return make_error(Errc::tls_config, "TLS configuration: " + what); }

std::string last_openssl_error() {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  const char* reason = code ? ERR_reason_error_string(code) : nullptr;
  return reason ? reason : "unknown OpenSSL error";
}

// The one NAME.key in `dir` besides ca.key, when `name` is not given.
Result<std::string> pick_identity(const TlsConfig& config) {
  if (!config.name.empty()) {
    if (!valid_identity_name(config.name)) return config_error("bad identity name '" + config.name + "' (--tls-name)");
    return config.name;
  }
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(config.dir, ec)) {
    const auto& p = entry.path();
    if (p.extension() == ".key" && p.stem() != "ca") names.push_back(p.stem().string());
  }
  if (ec) return config_error("cannot read directory " + config.dir + ": " + ec.message());
  std::sort(names.begin(), names.end());
  if (names.empty()) {
    return config_error("no identity in " + config.dir + " (no NAME.key besides ca.key); make one with "
                        "`sojourn keygen --name NAME --ca CA_DIR --out " + config.dir + "`");
  }
  if (names.size() > 1) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    return config_error("several identities in " + config.dir + " (" + list + "); choose one with --tls-name");
  }
  return names.front();
}

Result<void> load_into(asio::ssl::context& ctx, const std::string& cert_path, const std::string& key_path,
                       const std::string& ca_path) {
  SSL_CTX* native = ctx.native_handle();
  SSL_CTX_set_min_proto_version(native, TLS1_3_VERSION);
  SSL_CTX_set_options(native, SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET);
  // Every connection proves who it is: no resumption, so no session state to steal.
  SSL_CTX_set_session_cache_mode(native, SSL_SESS_CACHE_OFF);
  // Peers hold the CA certificate already: send only our own.
  SSL_CTX_set_mode(native, SSL_MODE_NO_AUTO_CHAIN);
  SSL_CTX_set_num_tickets(native, 0);  // as a server: no session tickets either
  SSL_CTX_set_verify(native, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_verify_depth(native, 4);
  if (SSL_CTX_use_certificate_file(native, cert_path.c_str(), SSL_FILETYPE_PEM) != 1) {
    return config_error("cannot load certificate " + cert_path + ": " + last_openssl_error());
  }
  if (SSL_CTX_use_PrivateKey_file(native, key_path.c_str(), SSL_FILETYPE_PEM) != 1) {
    return config_error("cannot load private key " + key_path + ": " + last_openssl_error());
  }
  if (SSL_CTX_check_private_key(native) != 1) {
    return config_error(key_path + " is not the key of " + cert_path);
  }
  if (!ca_path.empty() && SSL_CTX_load_verify_locations(native, ca_path.c_str(), nullptr) != 1) {
    return config_error("cannot load CA certificate " + ca_path + ": " + last_openssl_error());
  }
  return {};
}

std::string verify_reason(int err) {
  switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED: return "certificate expired";
    case X509_V_ERR_CERT_NOT_YET_VALID: return "certificate not yet valid";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: return "certificate from another CA";
    case X509_V_ERR_CERT_SIGNATURE_FAILURE: return "bad certificate signature";
    default: return X509_verify_cert_error_string(err);
  }
}

}  // namespace

TlsContext::TlsContext() : context_(asio::ssl::context::tls) {}

bool TlsContext::pin_matches(const std::string& fingerprint) const {
  return std::find(pins_.begin(), pins_.end(), fingerprint) != pins_.end();
}

std::string TlsContext::expected_pins() const {
  if (pins_.size() == 1) return "expected " + pins_.front();
  std::string list;
  for (const auto& p : pins_) list += (list.empty() ? "" : ", ") + p;
  return "expected one of " + list;
}

std::string TlsContext::expected_at(const std::string& address) const {
  auto it = expected_.find(address);
  return it == expected_.end() ? std::string() : it->second;
}

namespace {

// TlsConfig::peers, keyed by the address in the form links name their peer, each identity
// a fingerprint (as parse_fingerprint writes it) or a certificate name.
Result<std::map<std::string, std::string>> expected_identities(const TlsConfig& config) {
  std::map<std::string, std::string> out;
  for (const auto& [where, who] : config.peers) {
    auto address = parse_address(where);
    if (!address) return config_error("peer " + who + "=" + where + ": " + address.error().message);
    if (address->kind != Address::Kind::tcp) return config_error("peer " + who + "=" + where + ": not a HOST:PORT address");
    std::string identity = who;
    if (auto fp = parse_fingerprint(who); fp) {
      identity = *fp;
    } else if (!valid_identity_name(who)) {
      return config_error("peer " + who + "=" + where + ": '" + who +
                          "' is neither an identity name (1-64 of A-Z a-z 0-9 . _ -) nor a key fingerprint");
    }
    auto [it, fresh] = out.emplace(address->to_string(), identity);
    if (!fresh && it->second != identity) {
      return config_error("peer " + address->to_string() + " is expected to be both '" + it->second + "' and '" + identity + "'");
    }
  }
  return out;
}

}  // namespace

Result<std::shared_ptr<const TlsContext>> make_tls_context(const TlsConfig& config) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (config.dir.empty()) return config_error("no TLS directory given");
  if (!fs::is_directory(config.dir, ec)) return config_error(config.dir + " is not a directory");
  auto name = pick_identity(config);
  if (!name) return name.error();
  const std::string key_path = (fs::path(config.dir) / (*name + ".key")).string();
  const std::string cert_path = (fs::path(config.dir) / (*name + ".crt")).string();
  struct stat st {};
  if (::stat(key_path.c_str(), &st) != 0) return config_error("no private key " + key_path);
  if ((st.st_mode & 077) != 0) {
    return config_error(key_path + " is readable by other users; `chmod 600 " + key_path + "` first");
  }
  auto context = std::make_shared<TlsContext>();
  auto expected = expected_identities(config);
  if (!expected) return expected.error();
  context->expected_ = std::move(*expected);
  std::string ca_path;
  if (!config.pins.empty()) {
    for (const auto& text : config.pins) {
      auto fp = parse_fingerprint(text);
      if (!fp) return fp.error();
      context->pins_.push_back(*fp);
    }
    context->trust = std::to_string(context->pins_.size()) + (context->pins_.size() == 1 ? " pinned key" : " pinned keys");
  } else {
    ca_path = (fs::path(config.dir) / "ca.crt").string();
    auto ca = read_certificate(ca_path);
    if (!ca) {
      return config_error("nothing to trust peers by: no readable " + ca_path + " and no pinned key (--pin FINGERPRINT)");
    }
    context->trust = "CA '" + ca->common_name + "'";
  }
  if (auto loaded = load_into(context->context(), cert_path, key_path, ca_path); !loaded) return loaded.error();
  X509* own = SSL_CTX_get0_certificate(context->context().native_handle());
  context->self.name = transport_detail::common_name(own);
  context->self.fingerprint = public_key_fingerprint(X509_get0_pubkey(own));
  // An expired certificate of our own is only a warning: peers refuse it, and say so.
  if (X509_cmp_current_time(X509_get0_notAfter(own)) < 0) log_warn("tls", cert_path + " has expired: peers will refuse it");
  return std::shared_ptr<const TlsContext>(std::move(context));
}

const PeerIdentity& tls_local_identity(const TlsContext& context) { return context.self; }
std::string tls_trust_summary(const TlsContext& context) { return context.trust; }

namespace transport_detail {

std::string common_name(X509* cert) {
  char text[256] = {};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, text, sizeof text) < 0) return {};
  return text;
}

namespace {

// Any member of the CA (or holder of a pinned key) passes the trust check; an address with
// an expected identity accepts only that one: the leaf's CN or its key fingerprint.
bool expected_identity_holds(PeerCheck& check, x509_store_ctx_st* store) {
  if (check.expected.empty() || check.expected == check.name || check.expected == check.fingerprint) return true;
  check.refusal = "not the identity expected at this address: expected '" + check.expected + "', got '" + check.name +
                  "' (key " + check.fingerprint + ")";
  X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
  return false;
}

}  // namespace

bool verify_peer(const TlsContext& tls, PeerCheck& check, bool preverified, x509_store_ctx_st* store) {
  const int depth = X509_STORE_CTX_get_error_depth(store);
  const int err = X509_STORE_CTX_get_error(store);
  // The leaf: a failure may be reported first at a deeper certificate of the chain.
  X509* cert = X509_STORE_CTX_get0_cert(store);
  if (cert != nullptr && check.fingerprint.empty()) {
    check.name = common_name(cert);
    check.fingerprint = public_key_fingerprint(X509_get0_pubkey(cert));
  }
  if (!check.refusal.empty()) return false;
  if (tls.pinned()) {
    // Only the leaf's key counts; no CA is consulted, so chain errors do not.
    if (depth > 0) return true;
    if (!tls.pin_matches(check.fingerprint)) {
      check.refusal = "pinned key mismatch: " + tls.expected_pins() + ", got " + check.fingerprint;
      X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
      return false;
    }
    if (err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID) {
      check.refusal = verify_reason(err);
      return false;
    }
    return expected_identity_holds(check, store);
  }
  if (!preverified) {
    check.refusal = verify_reason(err);
    return false;
  }
  // The chain is good up to here; the leaf comes last (depth 0).
  return depth > 0 || expected_identity_holds(check, store);
}

namespace {

// A TLS alert the peer sent, as OpenSSL reports it (reason = 1000 + alert number); -1 if none.
int received_alert(const boost::system::error_code& ec) {
  if (ec.category() != asio::error::get_ssl_category()) return -1;
  int reason = ERR_GET_REASON(static_cast<unsigned long>(ec.value()));
  if (reason < SSL_AD_REASON_OFFSET || reason >= SSL_AD_REASON_OFFSET + 256) return -1;
  return reason - SSL_AD_REASON_OFFSET;
}

}  // namespace

bool is_certificate_alert(const boost::system::error_code& ec) {
  switch (received_alert(ec)) {
    case SSL3_AD_BAD_CERTIFICATE:
    case SSL3_AD_UNSUPPORTED_CERTIFICATE:
    case SSL3_AD_CERTIFICATE_REVOKED:
    case SSL3_AD_CERTIFICATE_EXPIRED:
    case SSL3_AD_CERTIFICATE_UNKNOWN:
    case TLS1_AD_UNKNOWN_CA:
    case TLS1_AD_ACCESS_DENIED:
    case TLS13_AD_CERTIFICATE_REQUIRED: return true;
    default: return false;
  }
}

Error refused_error(const std::string& peer, const boost::system::error_code& ec) {
  return make_error(Errc::refused_by_peer, "peer " + peer + " refused this node's certificate: " +
                                               SSL_alert_desc_string_long(received_alert(ec)));
}

Error handshake_error(const std::string& peer, const PeerCheck& check, const boost::system::error_code& ec,
                      std::chrono::milliseconds timed_out_after) {
  auto failed = [&](const std::string& why) {
    return make_error(Errc::tls_handshake_failed, "TLS handshake with " + peer + " failed: " + why);
  };
  if (timed_out_after.count() > 0) return failed("no answer within " + std::to_string(timed_out_after.count()) + " ms");
  auto untrusted = [&](const std::string& why) {
    std::string who = check.name.empty() ? peer : peer + " ('" + check.name + "')";
    return make_error(Errc::untrusted_peer, "untrusted peer " + who + ": " + why);
  };
  if (!check.refusal.empty()) return untrusted(check.refusal);
  if (is_certificate_alert(ec)) return refused_error(peer, ec);
  if (ec.category() == asio::error::get_ssl_category()) {
    switch (ERR_GET_REASON(static_cast<unsigned long>(ec.value()))) {
      case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: return untrusted("no certificate");
      case SSL_R_WRONG_VERSION_NUMBER:
      case SSL_R_PACKET_LENGTH_TOO_LONG:
      case SSL_R_HTTP_REQUEST:
      case SSL_R_RECORD_LENGTH_MISMATCH: return failed("the peer does not speak TLS (a node without --tls?)");
      case SSL_R_UNSUPPORTED_PROTOCOL:
      case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION: return failed("no common TLS version (this node speaks TLS 1.3 only)");
      default: break;
    }
    if (int alert = received_alert(ec); alert >= 0) return failed(std::string("the peer sent alert '") + SSL_alert_desc_string_long(alert) + "'");
  }
  if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated || ec == asio::error::connection_reset) {
    return failed("connection closed during the handshake (a node without --tls?)");
  }
  return failed(ec.message());
}

}  // namespace transport_detail
}  // namespace sojourn
