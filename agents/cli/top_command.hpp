// `sojourn top HOST:PORT`: a node's dashboard in a terminal, read from its --http address
// (docs/cli.md, docs/observability.md).
#pragma once

#include <cstdint>
#include <string>

#include "agents/cli/commands.hpp"

namespace sojourn::cli {

struct TopCommand {
  std::string address;  // the node's --http HOST:PORT
  TlsFlags tls;         // HTTPS with this side's certificate, when the node serves --tls
  std::uint32_t interval_ms = 1000;
  bool once = false;
};
int run_top(const TopCommand& c);

}  // namespace sojourn::cli
