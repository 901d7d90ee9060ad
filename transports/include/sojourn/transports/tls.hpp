// Mutually authenticated TLS between nodes: the configuration a node or client gives
// (a directory made by `sojourn keygen`, optionally pinned peer keys) and the opaque
// context made from it once and shared by every connection. Asio's SSL headers stay in
// the transports' implementation files.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/peer.hpp"

namespace sojourn {

struct TlsConfig {
  // Holds this side's NAME.key and NAME.crt and, to trust a CA, its ca.crt. Empty: no TLS.
  std::string dir;
  // Which identity of `dir` to use; empty: the only NAME.key there besides ca.key.
  std::string name;
  // Pinned-key mode (two nodes without a CA): peers are trusted when their public key has
  // one of these SHA-256 fingerprints, and no CA is consulted. Empty: trust dir/ca.crt.
  std::vector<std::string> pins;
  // Identities expected at addresses ("HOST:PORT" -> a certificate CN or a key fingerprint,
  // `--peer NAME=HOST:PORT`): a connection this side makes to such an address is refused
  // unless the server's verified certificate has that name or key, so no other member of
  // the CA can answer for it. Addresses not listed accept any trusted certificate.
  std::map<std::string, std::string> peers;

  bool enabled() const { return !dir.empty(); }
};

class TlsContext;  // OpenSSL contexts for both roles, the trust anchors, this side's identity

// Loads the identity and the trust anchors: TLS 1.3 only, the peer's certificate required
// and verified in both directions. Errors: tls_config.
Result<std::shared_ptr<const TlsContext>> make_tls_context(const TlsConfig& config);

// This side's identity (its certificate's CN and key fingerprint; no address).
const PeerIdentity& tls_local_identity(const TlsContext& context);
// "CA 'sojourn CA'" or "2 pinned keys": what peers are checked against, for logs.
std::string tls_trust_summary(const TlsContext& context);

}  // namespace sojourn
