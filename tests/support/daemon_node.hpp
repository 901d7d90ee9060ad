// Test support: a `sojourn node` daemon on loopback started through the command line, and
// the address it prints once it listens.
#pragma once

#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include "tests/support/process.hpp"

namespace sojourn::test {

// Reads `node`'s stdout up to "node NAME listening on ADDRESS" (lines before it announce
// published modules) and returns ADDRESS; fails the test if it does not come. A loaded
// sanitizer run may take seconds to start a node: each line may take `line_timeout_ms`, and
// up to `max_lines` lines may come first, each shown to `seen` when given.
inline std::string listening_address(Process& node, const std::string& name, int line_timeout_ms = 30000,
                                     int max_lines = 10,
                                     const std::function<void(const std::string&)>& seen = {}) {
  const std::string prefix = "node " + name + " listening on ";
  std::string line;
  for (int i = 0; i < max_lines && line.rfind(prefix, 0) != 0; ++i) {
    line = node.read_line(line_timeout_ms);
    if (seen) seen(line);
  }
  REQUIRE(line.rfind(prefix, 0) == 0);
  return line.substr(prefix.size());
}

// `CLI node --listen 127.0.0.1:0 --name NAME --grace-ms 2000 EXTRA...`, running until destroyed.
struct DaemonNode {
  Process process;
  std::string address;

  DaemonNode(const std::string& cli, const std::string& name, const std::vector<std::string>& extra = {})
      : process([&] {
          std::vector<std::string> argv{cli, "node", "--listen", "127.0.0.1:0", "--name", name, "--grace-ms", "2000"};
          argv.insert(argv.end(), extra.begin(), extra.end());
          return argv;
        }()) {
    REQUIRE(process.started());
    address = listening_address(process, name);
  }
};

}  // namespace sojourn::test
