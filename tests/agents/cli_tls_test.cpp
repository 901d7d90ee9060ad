// `sojourn ca init`, `keygen`, `fingerprint` and `node --tls` end to end: files and modes,
// a TLS node that serves a client with a certificate and refuses one without.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <filesystem>

#include "tests/support/daemon_node.hpp"
#include "tests/support/process.hpp"
#include "tests/transports/tls_support.hpp"

using sojourn::test::Process;
using sojourn::test::run;

namespace {

const std::string cli = SOJOURN_CLI_PATH;

int mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<int>(st.st_mode & 0777);
}

// The value after `label` on the line of `text` that has it.
std::string field(const std::string& text, const std::string& label) {
  auto at = text.find(label);
  REQUIRE(at != std::string::npos);
  auto end = text.find('\n', at);
  return text.substr(at + label.size(), end - at - label.size());
}

}  // namespace

TEST_CASE("sojourn ca init and keygen write Ed25519 keys at mode 0600 and certificates; nothing is overwritten") {
  sojourn::test::TempDir dir;
  auto ca = run({cli, "ca", "init", dir / "ca", "--name", "test CA"});
  CHECK(ca.exit_code == 0);
  CHECK(ca.out.rfind("CA 'test CA' created in " + (dir / "ca") + "\n", 0) == 0);
  CHECK(mode_of(dir / "ca/ca.key") == 0600);
  CHECK(std::filesystem::exists(dir / "ca/ca.crt"));

  auto again = run({cli, "ca", "init", dir / "ca"});
  CHECK(again.exit_code == 2);
  CHECK(again.err == "sojourn: error: TLS configuration: " + (dir / "ca/ca.key") +
                         " exists already; remove it first or choose another name\n");

  auto key = run({cli, "keygen", "--name", "a", "--ca", dir / "ca", "--out", dir / "a"});
  CHECK(key.exit_code == 0);
  CHECK(mode_of(dir / "a/a.key") == 0600);
  CHECK(std::filesystem::exists(dir / "a/a.crt"));
  CHECK(std::filesystem::exists(dir / "a/ca.crt"));
  CHECK(key.out.find("certificate signed by CA 'test CA'") != std::string::npos);
  const std::string fp = field(key.out, "key fingerprint ");
  CHECK(fp.size() == 64);
  // The same fingerprint from the key and from the certificate.
  auto from_key = run({cli, "fingerprint", dir / "a/a.key"});
  auto from_cert = run({cli, "fingerprint", dir / "a/a.crt"});
  CHECK(from_key.out == fp + "\n");
  CHECK(from_cert.out == fp + "\n");
  auto pem = run({"/usr/bin/head", "-n", "1", dir / "a/a.key"});
  CHECK(pem.out == "-----BEGIN PRIVATE KEY-----\n");  // PKCS#8

  auto bad = run({cli, "keygen", "--name", "../x", "--ca", dir / "ca"});
  CHECK(bad.exit_code == 2);
  CHECK(bad.err.find("bad identity name '../x'") != std::string::npos);
}

TEST_CASE("sojourn node --tls serves a client with a certificate and refuses a plain one, with the reason") {
  sojourn::test::TempDir dir;
  REQUIRE(run({cli, "ca", "init", dir / "ca"}).exit_code == 0);
  REQUIRE(run({cli, "keygen", "--name", "a", "--ca", dir / "ca", "--out", dir / "a"}).exit_code == 0);
  REQUIRE(run({cli, "keygen", "--name", "alice", "--ca", dir / "ca", "--out", dir / "alice"}).exit_code == 0);
  Process node({cli, "node", "--listen", "127.0.0.1:0", "--name", "a", "--tls", dir / "a", "--peer-isolation", "trusted",
                "--grace-ms", "1000"});
  REQUIRE(node.started());
  std::string line = node.read_line(10000);
  CHECK(line.rfind("node a serves mutual TLS as 'a' (key ", 0) == 0);
  CHECK(line.find("trusting CA 'sojourn CA'") != std::string::npos);
  const std::string address = sojourn::test::listening_address(node, "a", 10000);

  auto put = run({cli, "call", "--tls", dir / "alice", address, "kv.put", R"(["k", 41])"});
  CHECK(put.exit_code == 0);
  CHECK(put.out == "true\n");
  auto e = run({cli, "eval", "--tls", dir / "alice", address, "-e", "return node.call('kv.get', 'k') + 1"});
  CHECK(e.exit_code == 0);
  CHECK(e.out == "42\n");

  auto plain = run({cli, "call", address, "kv.get", R"(["k"])"});
  CHECK(plain.exit_code == 3);
  CHECK(plain.err == "sojourn: error: peer " + address +
                         " reported a protocol error: insecure transport: this node accepts only mutually authenticated "
                         "TLS; connect with --tls DIR\n");

  // A client whose pin is not the node's key.
  auto pinned = run({cli, "call", "--tls", dir / "alice", "--pin", std::string(64, 'a'), address, "kv.get", R"(["k"])"});
  CHECK(pinned.exit_code == 3);
  CHECK(pinned.err.find("pinned key mismatch: expected " + std::string(64, 'a') + ", got ") != std::string::npos);
}

TEST_CASE("sojourn node refuses plain TCP on a non-loopback address unless --insecure") {
  auto refused = run({cli, "node", "--listen", "0.0.0.0:0", "--name", "open", "--peer-isolation", "trusted"});
  CHECK(refused.exit_code == 2);
  CHECK(refused.err.find("sojourn: error: insecure transport: refusing plain TCP on 0.0.0.0:0") != std::string::npos);
  Process insecure({cli, "node", "--listen", "0.0.0.0:0", "--name", "open", "--peer-isolation", "trusted", "--insecure"});
  REQUIRE(insecure.started());
  std::string line;
  for (int i = 0; i < 10 && line.rfind("node open listening on ", 0) != 0; ++i) line = insecure.read_line(10000);
  CHECK(line.rfind("node open listening on 0.0.0.0:", 0) == 0);
}
