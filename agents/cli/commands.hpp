// The `sojourn` command line: each subcommand is a function over parsed options
// that returns the process exit code (see docs/cli.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sojourn/core/error.hpp"

namespace sojourn::cli {

enum ExitCode : int {
  exit_ok = 0,
  exit_internal = 1,
  exit_usage = 2,       // bad command line, JSON, address or file
  exit_connection = 3,  // could not reach the peer, connection lost, timed out
  exit_remote = 4,      // the peer answered with an error (service, Lua, limits)
};

// Maps an error to the exit code that tells the three kinds of failure apart.
int exit_code_for(const Error& e);

struct NodeCommand {
  std::vector<std::string> listen;
  std::string name = "node";
  std::size_t workers = 2;
  std::uint64_t cpu = 0, memory = 0;
  std::uint32_t wall_ms = 0;
  std::uint32_t grace_ms = 5000;
};
int run_node(const NodeCommand& c);

struct CallCommand {
  std::string peer, service, args_json = "[]";
  bool json = false;
  std::uint32_t timeout_ms = 30000;
};
int run_call(const CallCommand& c);

struct EvalCommand {
  std::string peer, file, code, args_json = "[]", isolation = "trusted";
  bool json = false;
  std::uint64_t cpu = 0, memory = 0;
  std::uint32_t wall_ms = 0, timeout_ms = 30000;
};
int run_eval(const EvalCommand& c);

}  // namespace sojourn::cli
