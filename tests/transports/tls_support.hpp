// Test support for TLS: a temporary directory with a CA and identities made by the same
// functions as `sojourn ca init` and `sojourn keygen`.
#pragma once

#include <doctest/doctest.h>

#include <string>

#include "sojourn/core/identity.hpp"
#include "tests/support/temp_dir.hpp"

namespace sojourn::test {

// A CA in ROOT/CA_NAME; identities in ROOT/NAME (each a TLS directory: NAME.key, NAME.crt, ca.crt).
struct Pki {
  TempDir root;
  std::string ca_dir;
  explicit Pki(const std::string& ca_name = "ca") : ca_dir(root / ca_name) {
    REQUIRE(create_ca(ca_dir, "test " + ca_name).ok());
  }
  std::string identity(const std::string& name, Validity validity = {}) {
    auto files = create_identity(name, ca_dir, root / name, validity);
    REQUIRE(files.ok());
    return root / name;
  }
  // A self-signed identity, for pinned mode.
  std::string self_signed(const std::string& name) {
    auto files = create_identity(name, "", root / name);
    REQUIRE(files.ok());
    return root / name;
  }
  std::string fingerprint(const std::string& name) {
    auto fp = key_file_fingerprint(root / (name + "/" + name + ".key"));
    REQUIRE(fp.ok());
    return *fp;
  }
};

}  // namespace sojourn::test
