// Internal: the TLS context behind the opaque TlsContext of tls.hpp, the check of a peer's
// certificate during a handshake, and the errors a failed handshake or a TLS alert becomes.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "transports/asio_full.hpp"

#include <boost/asio/ssl/context.hpp>

#include "sojourn/transports/tls.hpp"

struct x509_store_ctx_st;  // OpenSSL's X509_STORE_CTX
struct x509_st;            // OpenSSL's X509

namespace sojourn {

class TlsContext {
 public:
  TlsContext();
  // One context for both ends of a connection (the handshake picks the role). Asio's streams
  // take it by non-const reference; it is not changed after make_tls_context.
  asio::ssl::context& context() const { return context_; }
  bool pinned() const { return !pins_.empty(); }
  bool pin_matches(const std::string& fingerprint) const;
  // "expected FP" or "expected one of FP1, FP2".
  std::string expected_pins() const;
  // The identity (CN or key fingerprint) expected at `address` (Address::to_string form);
  // empty when none is configured.
  std::string expected_at(const std::string& address) const;

  PeerIdentity self;
  std::string trust;  // see tls_trust_summary

 private:
  friend Result<std::shared_ptr<const TlsContext>> make_tls_context(const TlsConfig& config);
  mutable asio::ssl::context context_;
  std::vector<std::string> pins_;
  std::map<std::string, std::string> expected_;  // address -> CN or fingerprint
};

namespace transport_detail {

// What the verification of one handshake saw of the peer's leaf certificate.
struct PeerCheck {
  std::string name, fingerprint;
  std::string refusal;  // why the certificate was refused; empty while it is not
  // A client's expectation for the address it dialled (TlsContext::expected_at): the leaf
  // must have this CN or key fingerprint. Empty: any certificate the trust anchors accept.
  std::string expected;
};

// The CN of a certificate's subject; empty when it has none.
std::string common_name(x509_st* cert);

// The verify callback of one connection: OpenSSL's chain verification against the CA, or
// the pinned keys, then the identity expected at the dialled address; records the leaf and the reason of a refusal in `check`.
bool verify_peer(const TlsContext& tls, PeerCheck& check, bool preverified, x509_store_ctx_st* store);

// The Error a failed handshake with `peer` becomes:
//   untrusted_peer        "untrusted peer PEER: REASON" (PEER ('CN') when the certificate had one)
//   refused_by_peer       "peer PEER refused this node's certificate: ALERT"
//   tls_handshake_failed  "TLS handshake with PEER failed: ..."
Error handshake_error(const std::string& peer, const PeerCheck& check, const boost::system::error_code& ec,
                      std::chrono::milliseconds timed_out_after);
// After the handshake: a TLS alert that refuses this side's certificate (TLS 1.3 sends the
// server's verdict on a client certificate after the client finished its handshake).
bool is_certificate_alert(const boost::system::error_code& ec);
Error refused_error(const std::string& peer, const boost::system::error_code& ec);

}  // namespace transport_detail
}  // namespace sojourn
