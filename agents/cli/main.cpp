// Entry point of the `sojourn` command: parses the command line with CLI11 and
// dispatches to a subcommand.
#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "sojourn/core/log.hpp"

int main(int argc, char** argv) {
  using namespace sojourn::cli;
  CLI::App app{"sojourn: run a code-mobility node, call its services, evaluate Lua on it"};
  app.require_subcommand(1);
  std::string log_level;
  app.add_option("--log-level", log_level, "debug, info, warn, error or off (default: warn, or $SOJOURN_LOG)");

  NodeCommand node;
  auto* node_cmd = app.add_subcommand("node", "Run a node until SIGINT or SIGTERM");
  node_cmd->add_option("--listen,-l", node.listen, "Address to serve on: HOST:PORT or inproc://NAME (repeatable)")->required();
  node_cmd->add_option("--name,-n", node.name, "Node name")->capture_default_str();
  node_cmd->add_option("--workers", node.workers, "Threads that run Lua and services")->capture_default_str()->check(CLI::Range(1, 256));
  node_cmd->add_option("--cpu", node.cpu, "Default CPU limit of an evaluation, in Lua instructions");
  node_cmd->add_option("--memory", node.memory, "Default memory limit of an evaluation, in bytes");
  node_cmd->add_option("--wall-ms", node.wall_ms, "Default wall-clock limit of an evaluation, in ms");
  node_cmd->add_option("--grace-ms", node.grace_ms, "Time requests in flight get to finish at shutdown")->capture_default_str();

  CallCommand call;
  auto* call_cmd = app.add_subcommand("call", "Client-server: run a service at a node");
  call_cmd->add_option("peer", call.peer, "HOST:PORT of the node")->required();
  call_cmd->add_option("service", call.service, "Service name, e.g. kv.get")->required();
  call_cmd->add_option("args", call.args_json, "Arguments as a JSON array")->capture_default_str();
  call_cmd->add_flag("--json", call.json, "Print machine-readable JSON");
  call_cmd->add_option("--timeout-ms", call.timeout_ms, "Request timeout")->capture_default_str();

  CallCommand info;
  auto* info_cmd = app.add_subcommand("info", "Show a node's name, version, uptime and services (node.info)");
  info_cmd->add_option("peer", info.peer, "HOST:PORT of the node")->required();
  info_cmd->add_flag("--json", info.json, "Print machine-readable JSON");

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
  return exit_usage;
}
