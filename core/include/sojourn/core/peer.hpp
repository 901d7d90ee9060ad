// Who sent a request: the peer's address and, over mutually authenticated TLS, the
// identity its certificate proved. A node's request path carries it to the code that
// decides what the peer may do (logs, the policy).
#pragma once

#include <string>

namespace sojourn {

struct PeerIdentity {
  // "10.0.0.2:51234" for TCP and TLS, "inproc" for a node in this process, "local" for
  // this node's own code (Lua's node.call, call_local).
  std::string address;
  // The common name (CN) of its certificate; empty unless TLS authenticated the peer.
  std::string name;
  // Lowercase hex SHA-256 of its public key (for Ed25519, of the raw 32-byte key: the
  // same fingerprint `sojourn keygen` prints); empty unless TLS authenticated the peer.
  std::string fingerprint;

  bool authenticated() const { return !fingerprint.empty(); }
  // "a [3fa1c2d4e5f6] at 10.0.0.2:51234", or the bare address when unauthenticated.
  std::string to_string() const {
    if (!authenticated()) return address;
    return (name.empty() ? std::string("?") : name) + " [" + fingerprint.substr(0, 12) + "] at " + address;
  }
};

}  // namespace sojourn
