// Entry point of the `sojourn` command: parses the command line with CLI11 and
// dispatches to a subcommand.
#include <CLI/CLI.hpp>

#include <memory>
#include <set>
#include <string>

#include "agents/cli/commands.hpp"
#include "agents/cli/experiment_commands.hpp"
#include "agents/cli/top_command.hpp"
#include "agents/cli/trust_commands.hpp"
#include "sojourn/core/log.hpp"

namespace {

// "sojourn 0.1.0 (commit 1a2b3c4d5e6f)": CMake's project version, and the commit the build
// was configured at when it was made from a git checkout.
std::string version_text() {
  std::string text = "sojourn " SOJOURN_VERSION;
  if (const std::string_view commit = SOJOURN_GIT_COMMIT; !commit.empty()) text.append(" (commit ").append(commit).append(")");
  return text;
}

// CLI11's TOML/INI reader with the keys of a flat file given to the node subcommand: the file
// says `listen = ...` (or `[node]` then `listen = ...`) and means `sojourn node --listen ...`;
// the top-level flags (`log-level`, `log-format`) stay top-level.
class NodeConfigFile : public CLI::ConfigTOML {
 public:
  explicit NodeConfigFile(std::set<std::string> top_level) : top_level_(std::move(top_level)) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::vector<CLI::ConfigItem> parsed = CLI::ConfigTOML::from_config(input);
    for (CLI::ConfigItem& item : parsed) {
      if (item.parents.empty() && top_level_.count(item.name) == 0) item.parents.emplace_back("node");
    }
    return parsed;
  }

 private:
  std::set<std::string> top_level_;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace sojourn::cli;
  CLI::App app{"sojourn: run a code-mobility node; call, evaluate, fetch code, launch and track mobile agents"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_text(), "Print the version and exit");
  std::string log_level;
  app.add_option("--log-level", log_level, "debug, info, warn, error or off (default: warn, or $SOJOURN_LOG)");
  std::string log_format;
  app.add_option("--log-format", log_format,
                 "text (\"2026-12-04T15:20:01.123Z warn node: ...\") or json (one object a line); default: text, "
                 "or $SOJOURN_LOG_FORMAT");

  NodeCommand node;
  auto* node_cmd = app.add_subcommand("node", "Run a node until SIGINT or SIGTERM");
  node_cmd->add_option("--listen,-l", node.listen, "Address to serve on: HOST:PORT or inproc://NAME (repeatable)")->required();
  node_cmd->add_option("--name,-n", node.name, "Node name")->capture_default_str();
  node_cmd->add_option("--workers", node.workers, "Threads that run Lua and services")->capture_default_str()->check(CLI::Range(1, 256));
  node_cmd->add_option("--max-connections", node.max_connections, "Connections served at once; one more is closed at accept")
      ->capture_default_str()->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  node_cmd->add_option("--cpu", node.cpu, "Default CPU limit of an evaluation, in Lua instructions");
  node_cmd->add_option("--memory", node.memory, "Default memory limit of an evaluation, in bytes");
  node_cmd->add_option("--wall-ms", node.wall_ms, "Default wall-clock limit of an evaluation, in ms");
  node_cmd->add_option("--grace-ms", node.grace_ms, "Time requests in flight get to finish at shutdown")->capture_default_str();
  node_cmd->add_option("--publish", node.publish, "Publish a Lua module for code-on-demand: FILE or NAME=FILE (repeatable)");
  node_cmd->add_option("--data", node.data, "Put KEY=JSON in the node's kv store at start (repeatable)");
  node_cmd->add_option("--code-cache", node.code_cache, "Directory that keeps received code bundles across restarts");
  node_cmd->add_option("--peer-isolation", node.peer_isolation,
                       "Least isolation for code from peers: auto (default: microvm where KVM can run the guest, "
                       "else process), microvm, process or trusted")->capture_default_str();
  node_cmd->add_option("--warm-guests", node.warm_guests,
                       "Process-jail guests kept warm for each principal (a signer or a peer); 0: a fresh guest per run")
      ->capture_default_str()->check(CLI::Range(0, 1024));
  node_cmd->add_option("--image-codec", node.image_codec,
                       "How a strong agent's heap image is encoded when it leaves this node: lz4 (default: cheap, for "
                       "loopback and fast links), zstd (smallest, for slow links) or stored")
      ->capture_default_str()->check(CLI::IsMember({"lz4", "zstd", "stored"}));
  node_cmd->add_option("--inline-eval-instructions", node.inline_eval_instructions,
                       "Unsigned evaluations run at 'trusted', or at 'process' in an idle warm guest, are first tried "
                       "on the network thread within this many Lua instructions (and 2 ms), reading only kv.get, "
                       "kv.keys and node.info; 0: never")
      ->capture_default_str()->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1'000'000}));
  node_cmd->add_option("--advertise", node.advertise,
                       "HOST:PORT peers reach this node at (default: the first --listen; for 0.0.0.0/[::] an address of "
                       "this host's interfaces)");
  node_cmd->add_option("--data-dir", node.data_dir, "Directory the node keeps its state in: its id and, in DIR/sojourn.db "
                       "(SQLite), the kv store, the agents it is home to and its resident weak agents (default: memory only, a fresh id per start)");
  node_cmd->add_option("--durability", node.durability, "With --data-dir: full (default: an acknowledged write is on disk) or "
                       "normal (faster; survives a crash of the node, not a power loss) (docs/reliability.md)")
      ->capture_default_str()->check(CLI::IsMember({"full", "normal"}));
  node_cmd->add_option("--migration-retries", node.migration_retries,
                       "Times a hand-over that failed for a network reason is tried again before the next stop, home, "
                       "or stranded (a destination restarting on its --data-dir comes back within them)")
      ->capture_default_str()->check(CLI::Range(0, 30));
  node_cmd->add_option("--retry-backoff-ms", node.retry_backoff_ms,
                       "Wait before the first retry of a hand-over; each next retry waits twice the one before")
      ->capture_default_str()->check(CLI::Range(1, 60'000));
  node_cmd->add_option("--policy", node.policy, "Policy file (JSON, docs/security.md): signers and peers -> jails, quotas, services");
  add_tls_flags(*node_cmd, node.tls);
  node_cmd->add_flag("--insecure", node.insecure, "Allow plain TCP (no --tls) on a non-loopback address");
  // `sojourn node --config FILE` (docs/cli.md): the node passes the flag it does not know up to
  // the top level, where CLI11 reads config files (it reads them only there).
  node_cmd->fallthrough();
  node_cmd->footer("--config FILE (see `sojourn --help`) reads these flags from a TOML/INI file; flags given here override it.");
  node_cmd->add_option("--link", node.links, "Emulate a link to HOST:PORT (or HOST, or *): 'HOST:PORT=delay:40ms,bw:100mbit' "
                       "(keys delay, jitter, bw, burst, setup; repeatable; docs/experiments.md)");
  node_cmd->add_option("--link-profile", node.link_profile, "Emulate a named link to every other destination: seed-wan, lan, "
                       "wifi, 3g, or PROFILE:LINK (e.g. seed-wan:wa-local)");
  node_cmd->add_option("--link-seed", node.link_seed, "Seed of the emulated links' jitter")->capture_default_str();
  node_cmd->add_option("--trace", node.trace, "Append every event to FILE as JSON lines (docs/experiments.md, Traces)");
  node_cmd->add_option("--http", node.http, "HOST:PORT of the read-only dashboard, /metrics and JSON API (docs/observability.md)");

  CallCommand call;
  auto* call_cmd = app.add_subcommand("call", "Client-server: run a service at a node");
  call_cmd->add_option("peer", call.peer, "HOST:PORT of the node")->required();
  call_cmd->add_option("service", call.service, "Service name, e.g. kv.get")->required();
  call_cmd->add_option("args", call.args_json, "Arguments as a JSON array")->capture_default_str();
  call_cmd->add_flag("--json", call.json, "Print machine-readable JSON");
  call_cmd->add_option("--timeout-ms", call.timeout_ms, "Request timeout")->capture_default_str();
  add_tls_flags(*call_cmd, call.tls);

  CallCommand info;
  auto* info_cmd = app.add_subcommand("info", "Show a node's name, version, uptime and services (node.info)");
  info_cmd->add_option("peer", info.peer, "HOST:PORT of the node")->required();
  info_cmd->add_flag("--json", info.json, "Print machine-readable JSON");
  add_tls_flags(*info_cmd, info.tls);

  EvalCommand eval;
  auto* eval_cmd = app.add_subcommand("eval", "Remote evaluation: run a Lua chunk at a node");
  eval_cmd->add_option("peer", eval.peer, "HOST:PORT of the node")->required();
  eval_cmd->add_option("file", eval.file, "Lua source file (or use -e)");
  eval_cmd->add_option("-e,--execute", eval.code, "Lua source text");
  eval_cmd->add_option("--args", eval.args_json, "Arguments as a JSON array, passed as ...")->capture_default_str();
  eval_cmd->add_flag("--json", eval.json, "Print machine-readable JSON");
  eval_cmd->add_option("--cpu", eval.cpu, "CPU limit in Lua instructions (0: the node's default)");
  eval_cmd->add_option("--memory", eval.memory, "Memory limit in bytes (0: the node's default)");
  eval_cmd->add_option("--wall-ms", eval.wall_ms, "Wall-clock limit in ms (0: the node's default)");
  eval_cmd->add_option("--isolation", eval.isolation, "trusted, process or microvm")->capture_default_str();
  eval_cmd->add_option("--timeout-ms", eval.timeout_ms, "Request timeout")->capture_default_str();
  eval_cmd->add_option("--sign", eval.sign, "Sign the chunk with this Ed25519 key (PEM), with a nonce and an expiry");
  add_tls_flags(*eval_cmd, eval.tls);

  FetchCommand fetch;
  auto* fetch_cmd = app.add_subcommand("fetch", "Code-on-demand: fetch a module from a node and run it here");
  fetch_cmd->add_option("peer", fetch.peer, "HOST:PORT of the node that publishes it")->required();
  fetch_cmd->add_option("module", fetch.module, "Module name")->required();
  fetch_cmd->add_option("--args", fetch.args_json, "Arguments as a JSON array, passed as ...")->capture_default_str();
  fetch_cmd->add_option("--data", fetch.data, "Put KEY=JSON in the local kv store the module runs on (repeatable)");
  fetch_cmd->add_option("--cache", fetch.cache_dir, "Code cache directory (default: ~/.cache/sojourn/code)");
  fetch_cmd->add_flag("--json", fetch.json, "Print machine-readable JSON");
  add_tls_flags(*fetch_cmd, fetch.tls);

  LaunchCommand launch;
  auto* launch_cmd = app.add_subcommand("launch", "Mobile agent: launch a Lua agent at a node (its home)");
  launch_cmd->add_option("file", launch.file, "The agent's Lua source file")->required();
  launch_cmd->add_option("--at", launch.at, "HOST:PORT of the node it starts at (its home)")->required();
  launch_cmd->add_option("--itinerary", launch.itinerary, "Nodes to visit next, comma-separated (agent.itinerary)");
  launch_cmd->add_option("--state", launch.state_json, "Initial state as a JSON object")->capture_default_str();
  launch_cmd->add_option("--entry", launch.entry, "Entry point called first")->capture_default_str();
  launch_cmd->add_option("--owner", launch.owner, "Owner name (default: $USER)");
  launch_cmd->add_option("--max-hops", launch.max_hops, "Most hops it may make (0: the node's default); in the manifest");
  launch_cmd->add_option("--cpu", launch.cpu, "CPU quota of one step, in Lua instructions (0: the node's default); in the manifest");
  launch_cmd->add_option("--cpu-budget", launch.cpu_budget, "Lua instructions it may spend over all its hops (0: no total); in the manifest");
  launch_cmd->add_option("--sign", launch.sign, "Sign the bundle (code and manifest, quotas included) with this Ed25519 key (PEM)");
  launch_cmd->add_flag("--strong", launch.strong,
                      "Strong mobility: its whole Lua heap travels and agent.go(peer) returns on the peer "
                      "(process or microvm level only); in the manifest (mobility = \"strong\")");
  launch_cmd->add_flag("--wait", launch.wait, "Wait for the result and print the itinerary taken");
  launch_cmd->add_option("--timeout-ms", launch.timeout_ms, "How long --wait waits")->capture_default_str();
  launch_cmd->add_flag("--json", launch.json, "Print machine-readable JSON");
  add_tls_flags(*launch_cmd, launch.tls);

  AgentCommand ps;
  auto* ps_cmd = app.add_subcommand("ps", "List the agents resident at a node");
  ps_cmd->add_option("peer", ps.peer, "HOST:PORT of the node")->required();
  ps_cmd->add_flag("--json", ps.json, "Print machine-readable JSON");
  add_tls_flags(*ps_cmd, ps.tls);

  AgentCommand locate;
  auto* locate_cmd = app.add_subcommand("locate", "Ask an agent's home node where the agent is");
  locate_cmd->add_option("agent", locate.agent_id, "Agent id")->required();
  locate_cmd->add_option("--home", locate.home, "The agent's home node")->capture_default_str();
  locate_cmd->add_flag("--json", locate.json, "Print machine-readable JSON");
  add_tls_flags(*locate_cmd, locate.tls);

  AgentCommand send;
  auto* send_cmd = app.add_subcommand("send", "Send a message to an agent through its home (agent.receive reads it)");
  send_cmd->add_option("agent", send.agent_id, "Agent id")->required();
  send_cmd->add_option("message", send.message_json, "The message as JSON")->required();
  send_cmd->add_option("--home", send.home, "The agent's home node")->capture_default_str();
  send_cmd->add_flag("--json", send.json, "Print machine-readable JSON");
  add_tls_flags(*send_cmd, send.tls);

  WaitCommand wait;
  auto* wait_cmd = app.add_subcommand("wait", "Wait for an agent to finish; print its result and itinerary");
  wait_cmd->add_option("agent", wait.agent_id, "Agent id")->required();
  wait_cmd->add_option("--home", wait.home, "The agent's home node")->capture_default_str();
  wait_cmd->add_option("--timeout-ms", wait.timeout_ms, "How long to wait")->capture_default_str();
  wait_cmd->add_flag("--json", wait.json, "Print machine-readable JSON");
  add_tls_flags(*wait_cmd, wait.tls);

  // After every subcommand is declared: the config reader must know the top-level option names.
  app.config_formatter(std::make_shared<NodeConfigFile>(std::set<std::string>{"log-level", "log-format"}));
  app.set_config("--config", "", "Read `sojourn node` flags from FILE (TOML or INI, `name = value`, "
                 "`listen = [\"a:1\", \"b:2\"]` for a repeated flag); flags on the command line override it");
  app.allow_config_extras(CLI::config_extras_mode::error);  // a misspelt key is an error, not ignored
  TopCommand top;
  auto* top_cmd = app.add_subcommand("top", "A node's live view in the terminal: agents, rates, latencies (from its --http)");
  top_cmd->add_option("address", top.address, "HOST:PORT of the node's --http")->required();
  top_cmd->add_flag("--once", top.once, "Print the view once and exit (for scripts)");
  top_cmd->add_option("--interval-ms", top.interval_ms, "Refresh interval")->capture_default_str()->check(CLI::Range(100, 3600000));
  add_tls_flags(*top_cmd, top.tls);

  TrustCommands trust;
  add_trust_commands(app, trust);
  ExperimentCommands experiments;
  add_experiment_commands(app, experiments, version_text());

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? exit_ok : exit_usage;
  }
  if (!log_level.empty()) {
    sojourn::LogLevel level;
    if (!sojourn::parse_log_level(log_level, level)) {
      std::fprintf(stderr, "sojourn: error: unknown log level '%s'\n", log_level.c_str());
      return exit_usage;
    }
    sojourn::set_log_level(level);
  }
  if (!log_format.empty()) {
    sojourn::LogFormat format;
    if (!sojourn::parse_log_format(log_format, format)) {
      std::fprintf(stderr, "sojourn: error: unknown log format '%s' (text or json)\n", log_format.c_str());
      return exit_usage;
    }
    sojourn::set_log_format(format);
  }
  if (int rc = run_trust_commands(trust); rc >= 0) return rc;
  if (int rc = run_experiment_commands(experiments); rc >= 0) return rc;
  if (node_cmd->parsed()) return run_node(node);
  if (call_cmd->parsed()) return run_call(call);
  if (info_cmd->parsed()) {
    info.service = "node.info";
    return run_call(info);
  }
  if (eval_cmd->parsed()) {
    if (eval.file.empty() == eval.code.empty()) {
      std::fprintf(stderr, "sojourn: error: eval needs exactly one of FILE or -e CODE\n");
      return exit_usage;
    }
    return run_eval(eval);
  }
  if (fetch_cmd->parsed()) return run_fetch(fetch);
  if (launch_cmd->parsed()) return run_launch(launch);
  if (ps_cmd->parsed()) return run_ps(ps);
  if (locate_cmd->parsed()) return run_locate(locate);
  if (send_cmd->parsed()) return run_send(send);
  if (wait_cmd->parsed()) return run_wait(wait);
  if (top_cmd->parsed()) return run_top(top);
  return exit_usage;
}
