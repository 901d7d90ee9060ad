// The cluster's keys from the command line: a CA, node and author identities (Ed25519,
// X.509), key fingerprints for pinned mode; and the TLS flags of the other commands.
#include "agents/cli/trust_commands.hpp"

#include <cstdio>
#include <ctime>

#include <CLI/CLI.hpp>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/identity.hpp"
#include "sojourn/transports/address.hpp"

namespace sojourn::cli {

namespace {

std::string date_of(std::int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M UTC", &tm);
  return text;
}

Validity validity_for(std::uint32_t days) {
  Validity v;
  v.not_after = std::chrono::hours(24) * days;
  return v;
}

int run_ca_init(const CaInitCommand& c) {
  auto files = create_ca(c.dir, c.name, validity_for(c.days));
  if (!files) return fail(files.error(), false);
  std::printf("CA '%s' created in %s\n", files->certificate.common_name.c_str(), c.dir.c_str());
  std::printf("  %s  the CA certificate: give it to every node and client\n", files->cert_path.c_str());
  std::printf("  %s  the CA key (mode 0600): keep it here, it signs identities\n", files->key_path.c_str());
  std::printf("  valid until %s\n", date_of(files->certificate.not_after).c_str());
  std::printf("next: sojourn keygen --name NODE --ca %s\n", c.dir.c_str());
  return exit_ok;
}

int run_keygen(const KeygenCommand& c) {
  const std::string out = c.out.empty() ? c.name : c.out;
  auto files = create_identity(c.name, c.ca, out, validity_for(c.days));
  if (!files) return fail(files.error(), false);
  const CertificateInfo& cert = files->certificate;
  std::printf("identity '%s' created in %s\n", cert.common_name.c_str(), out.c_str());
  std::printf("  %s  private key (Ed25519, PKCS#8, mode 0600)\n", files->key_path.c_str());
  if (c.ca.empty()) {
    std::printf("  %s  self-signed certificate (pinned mode: peers trust it with --pin %s)\n", files->cert_path.c_str(),
                cert.fingerprint.c_str());
  } else {
    std::printf("  %s  certificate signed by CA '%s'\n", files->cert_path.c_str(), cert.issuer_name.c_str());
    std::printf("  %s  the CA certificate, to verify peers\n", files->ca_cert_path.c_str());
  }
  std::printf("  key fingerprint %s\n", cert.fingerprint.c_str());
  std::printf("  valid until %s\n", date_of(cert.not_after).c_str());
  std::printf("use it: sojourn node --tls %s ...   or   sojourn call --tls %s ...\n", out.c_str(), out.c_str());
  return exit_ok;
}

}  // namespace

void add_tls_flags(CLI::App& command, TlsFlags& flags) {
  command.add_option("--tls", flags.dir, "Mutual TLS: directory with this side's NAME.key, NAME.crt and the CA's ca.crt");
  command.add_option("--tls-name", flags.name, "Which identity of the --tls directory (default: the only one)");
  // One fingerprint per --pin: a list would swallow the positional arguments after it.
  command.add_option("--pin", flags.pins, "Pinned mode: trust exactly the peer key with this SHA-256 fingerprint (repeatable)")
      ->allow_extra_args(false);
  command
      .add_option("--peer", flags.peers,
                  "NAME=HOST:PORT: the node at HOST:PORT must present identity NAME (a certificate CN or a key "
                  "fingerprint); a configured peer agents may go to (repeatable)")
      ->allow_extra_args(false)
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            auto eq = text.find('=');
            if (eq == std::string::npos || eq == 0) return "expected NAME=HOST:PORT, got '" + text + "'";
            auto address = parse_address(std::string_view(text).substr(eq + 1));
            if (!address || address->kind != Address::Kind::tcp) return "expected NAME=HOST:PORT, got '" + text + "'";
            return {};
          },
          "NAME=HOST:PORT"));
}

void apply_tls(const TlsFlags& flags, NodeOptions& options) {
  options.tls.dir = flags.dir;
  options.tls.name = flags.name;
  options.tls.pins = flags.pins;
  for (const auto& spec : flags.peers) {
    auto eq = spec.find('=');  // checked by the flag's validator
    options.tls.peers[spec.substr(eq + 1)] = spec.substr(0, eq);
  }
}

void add_trust_commands(CLI::App& app, TrustCommands& t) {
  auto* ca = app.add_subcommand("ca", "A cluster certificate authority");
  ca->require_subcommand(1);
  t.ca_init_cmd = ca->add_subcommand("init", "Create a CA (ca.key, ca.crt) in DIR");
  t.ca_init_cmd->add_option("dir", t.ca_init.dir, "Directory for the CA (created, mode 0700)")->required();
  t.ca_init_cmd->add_option("--name", t.ca_init.name, "The CA's common name")->capture_default_str();
  t.ca_init_cmd->add_option("--days", t.ca_init.days, "Validity in days")->capture_default_str()->check(CLI::Range(1, 36500));

  t.keygen_cmd = app.add_subcommand("keygen", "Create a node or author identity: NAME.key (Ed25519) and NAME.crt");
  t.keygen_cmd->add_option("--name", t.keygen.name, "Identity name: the certificate's CN and the file names")->required();
  t.keygen_cmd->add_option("--ca", t.keygen.ca, "CA directory that signs it (without: self-signed, for pinned mode)");
  t.keygen_cmd->add_option("--out", t.keygen.out, "Output directory (default: ./NAME)");
  t.keygen_cmd->add_option("--days", t.keygen.days, "Validity in days")->capture_default_str()->check(CLI::Range(1, 36500));

  t.fingerprint_cmd = app.add_subcommand("fingerprint", "Print the SHA-256 fingerprint of the key in a certificate or key file");
  t.fingerprint_cmd->add_option("file", t.fingerprint_file, "PEM certificate, private key or public key")->required();
}

int run_trust_commands(const TrustCommands& t) {
  if (t.ca_init_cmd->parsed()) return run_ca_init(t.ca_init);
  if (t.keygen_cmd->parsed()) return run_keygen(t.keygen);
  if (t.fingerprint_cmd->parsed()) {
    auto fp = key_file_fingerprint(t.fingerprint_file);
    if (!fp) return fail(fp.error(), false);
    std::printf("%s\n", fp->c_str());
    return exit_ok;
  }
  return -1;
}

}  // namespace sojourn::cli
