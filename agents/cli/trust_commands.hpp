// `sojourn ca init`, `sojourn keygen` and `sojourn fingerprint`: the keys and certificates
// of a cluster; and the --tls/--tls-name/--pin flags every command that talks to a node has.
#pragma once

#include <cstdint>
#include <string>

#include "agents/cli/commands.hpp"

namespace CLI {
class App;
}  // namespace CLI

namespace sojourn::cli {

struct CaInitCommand {
  std::string dir, name = "sojourn CA";
  std::uint32_t days = 3650;
};

struct KeygenCommand {
  std::string name, ca, out;  // out empty: ./NAME
  std::uint32_t days = 365;
};

struct TrustCommands {
  CaInitCommand ca_init;
  KeygenCommand keygen;
  std::string fingerprint_file;
  CLI::App* ca_init_cmd = nullptr;
  CLI::App* keygen_cmd = nullptr;
  CLI::App* fingerprint_cmd = nullptr;
};

// Registers `ca init`, `keygen` and `fingerprint` on the app.
void add_trust_commands(CLI::App& app, TrustCommands& commands);
// Runs the one that was parsed; -1 when none was.
int run_trust_commands(const TrustCommands& commands);

// Adds --tls DIR, --tls-name NAME, --pin FP and --peer NAME=HOST:PORT (both repeatable) to
// a subcommand.
void add_tls_flags(CLI::App& command, TlsFlags& flags);

}  // namespace sojourn::cli
