// The `sojourn` command line: each subcommand is a function over parsed options
// that returns the process exit code (see docs/cli.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn {
class Node;
struct NodeOptions;
}

namespace sojourn::cli {

// Puts each KEY=JSON into the node's kv store.
Result<void> seed_data(Node& node, const std::vector<std::string>& data);

enum ExitCode : int {
  exit_ok = 0,
  exit_internal = 1,
  exit_usage = 2,       // bad command line, JSON, address or file
  exit_connection = 3,  // could not reach the peer, connection lost, timed out
  exit_remote = 4,      // the peer answered with an error (service, Lua, limits)
};

// Maps an error to the exit code that tells the three kinds of failure apart.
int exit_code_for(const Error& e);

// --tls DIR, --tls-name NAME, --pin FP, --peer NAME=HOST:PORT: mutual TLS for a node or a
// client, and the identities expected at addresses (docs/tls.md).
struct TlsFlags {
  std::string dir, name;
  std::vector<std::string> pins;
  std::vector<std::string> peers;  // NAME=HOST:PORT
};
// Puts the flags into a node's options.
void apply_tls(const TlsFlags& flags, NodeOptions& options);

struct NodeCommand {
  std::vector<std::string> listen;
  std::vector<std::string> publish;  // FILE or NAME=FILE
  std::vector<std::string> data;     // KEY=JSON, put in the kv store at start
  std::string code_cache, advertise, peer_isolation = "auto", policy;
  std::string data_dir;
  std::string durability = "full";  // --durability full|normal (with --data-dir)
  std::string http;  // --http HOST:PORT: the dashboard, /metrics, the JSON API
  std::string name = "node";
  std::uint32_t warm_guests = 4;  // --warm-guests N
  std::string image_codec = "lz4";  // --image-codec lz4|zstd|stored
  std::uint64_t inline_eval_instructions = 20'000;  // --inline-eval-instructions N
  std::size_t workers = 2;
  std::size_t max_connections = 1024;
  std::uint64_t cpu = 0, memory = 0;
  std::uint32_t wall_ms = 0;
  std::uint32_t grace_ms = 5000;
  // A hand-over that fails for a network reason: tries again this many times, waiting
  // --retry-backoff-ms, then twice that, ... (NodeOptions::migration_retries, retry_backoff).
  std::uint32_t migration_retries = 3;
  std::uint32_t retry_backoff_ms = 50;
  TlsFlags tls;
  bool insecure = false;  // plain TCP on a non-loopback address
  // Emulated links (docs/experiments.md): --link HOST:PORT=SPEC (repeatable), --link-profile
  // PROFILE[:LINK] for every other destination, --link-seed N; --trace FILE.
  std::vector<std::string> links;
  std::string link_profile, trace;
  std::uint64_t link_seed = 1;
};
int run_node(const NodeCommand& c);

struct CallCommand {
  std::string peer, service, args_json = "[]";
  TlsFlags tls;
  bool json = false;
  std::uint32_t timeout_ms = 30000;
};
int run_call(const CallCommand& c);

struct EvalCommand {
  std::string peer, file, code, args_json = "[]", isolation = "trusted", sign;
  TlsFlags tls;
  bool json = false;
  std::uint64_t cpu = 0, memory = 0;
  std::uint32_t wall_ms = 0, timeout_ms = 30000;
};
int run_eval(const EvalCommand& c);

// Code-on-demand and mobile agents (mobility_commands.cpp).
struct FetchCommand {
  std::string peer, module, args_json = "[]", cache_dir;
  std::vector<std::string> data;  // KEY=JSON: the local data the module runs on
  TlsFlags tls;
  bool json = false;
};
int run_fetch(const FetchCommand& c);

struct LaunchCommand {
  std::string file, at, itinerary, state_json = "{}", entry = "start", owner, sign;
  std::uint32_t max_hops = 0, timeout_ms = 60000;
  std::uint64_t cpu = 0, cpu_budget = 0;  // the manifest's quota per run and its total
  TlsFlags tls;
  bool wait = false, json = false;
  bool strong = false;  // strong mobility: the heap travels, agent.go(peer) returns on the peer
};
int run_launch(const LaunchCommand& c);

struct AgentCommand {
  std::string peer, agent_id, home = "127.0.0.1:7400", message_json;
  TlsFlags tls;
  bool json = false;
};
int run_ps(const AgentCommand& c);
int run_locate(const AgentCommand& c);
int run_send(const AgentCommand& c);
struct WaitCommand {
  std::string agent_id, home = "127.0.0.1:7400";
  std::uint32_t timeout_ms = 60000;
  TlsFlags tls;
  bool json = false;
};
int run_wait(const WaitCommand& c);

// Shared by the command files.
Result<std::string> read_file(const std::string& path);
std::string file_stem(const std::string& path);
int fail(const Error& e, bool json);
std::string render(const Value& v);

}  // namespace sojourn::cli
