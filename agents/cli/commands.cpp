// The subcommands of `sojourn`.
#include "agents/cli/commands.hpp"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/json.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/core/signature.hpp"

namespace sojourn::cli {

namespace {

void print_error(const Error& e) { std::fprintf(stderr, "sojourn: error: %s\n", e.message.c_str()); }

std::string json_string(const std::string& s) {
  Value v(s);
  return *value_to_json(v);
}

std::string error_json(const Error& e) {
  return R"({"ok":false,"error":{"code":)" + json_string(std::string(errc_name(e.code))) +
         R"(,"message":)" + json_string(e.message) + "}}";
}

Result<Value> parse_args(const std::string& text) {
  auto v = value_from_json(text);
  if (!v) return v.error();
  if (!v->is_table() || v->size() != v->length()) {
    return errors::invalid_argument("arguments must be a JSON array, e.g. '[\"k\", 1]'");
  }
  return v;
}

}  // namespace

std::string render(const Value& v) {
  auto j = value_to_json(v);
  return j ? *j : to_debug_string(v, 4096);
}

int fail(const Error& e, bool json) {
  if (json) std::printf("%s\n", error_json(e).c_str());
  else print_error(e);
  return exit_code_for(e);
}

Result<void> seed_data(Node& node, const std::vector<std::string>& data) {
  for (const auto& spec : data) {
    auto eq = spec.find('=');
    if (eq == std::string::npos) return errors::invalid_argument("--data wants KEY=JSON");
    auto value = value_from_json(spec.substr(eq + 1));
    if (!value) return value.error();
    auto put = node.call_local("kv.put", Value::array({spec.substr(0, eq), *value}));
    if (!put) return put.error();
  }
  return {};
}

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return errors::invalid_argument("cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string file_stem(const std::string& path) {
  auto slash = path.find_last_of('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  auto dot = base.rfind(".lua");
  return dot != std::string::npos && dot + 4 == base.size() ? base.substr(0, dot) : base;
}

int exit_code_for(const Error& e) {
  switch (e.code) {
    case Errc::ok: return exit_ok;
    case Errc::invalid_json:
    case Errc::invalid_argument:
    case Errc::bad_address:
    case Errc::bad_key:
    case Errc::bad_policy:
    case Errc::tls_config:
    case Errc::insecure_transport: return exit_usage;
    case Errc::connect_failed:
    case Errc::connection_closed:
    case Errc::timeout:
    case Errc::remote_protocol_error:
    case Errc::tls_handshake_failed:
    case Errc::untrusted_peer:
    case Errc::refused_by_peer: return exit_connection;
    case Errc::internal: return exit_internal;
    default: return exit_remote;
  }
}

int run_node(const NodeCommand& c) {
  // Block the stop signals before any thread starts, then wait for them here.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  NodeOptions options;
  options.name = c.name;
  options.worker_threads = c.workers;
  options.max_connections = c.max_connections;
  if (c.cpu) options.default_limits.cpu_instructions = c.cpu;
  if (c.memory) options.default_limits.memory_bytes = c.memory;
  if (c.wall_ms) options.default_limits.wall_ms = c.wall_ms;
  for (Limits* l : {&options.max_limits}) {
    l->cpu_instructions = std::max(l->cpu_instructions, options.default_limits.cpu_instructions);
    l->memory_bytes = std::max(l->memory_bytes, options.default_limits.memory_bytes);
    l->wall_ms = std::max(l->wall_ms, options.default_limits.wall_ms);
  }
  options.code_cache_dir = c.code_cache;
  options.warm_guests = c.warm_guests;
  if (auto codec = parse_image_codec(c.image_codec)) {
    options.image_codec = *codec;
  } else {
    return fail(errors::invalid_argument("--image-codec: '" + c.image_codec + "' is not lz4, zstd or stored"), false);
  }
  options.inline_eval_instructions = c.inline_eval_instructions;
  if (c.peer_isolation != "auto") {
    auto peer_level = parse_isolation(c.peer_isolation);
    if (!peer_level) return fail(peer_level.error(), false);
    options.peer_isolation = *peer_level;
  }
  options.advertise = c.advertise;
  options.data_dir = c.data_dir;
  options.durability = c.durability == "normal" ? Durability::normal : Durability::full;
  options.migration_retries = c.migration_retries;
  options.retry_backoff = std::chrono::milliseconds(c.retry_backoff_ms);
  for (const auto& text : c.links) {
    auto rule = parse_link_rule(text);
    if (!rule) return fail(rule.error(), false);
    options.links.rules.push_back(*rule);
  }
  if (!c.link_profile.empty()) {
    auto spec = profile_link_spec(c.link_profile);
    if (!spec) return fail(spec.error(), false);
    options.links.rules.push_back(LinkRule{"*", std::nullopt, *spec});
  }
  options.links.seed = c.link_seed;
  options.trace = c.trace;
  if (!c.policy.empty()) {
    auto policy = Policy::load(c.policy);
    if (!policy) return fail(policy.error(), false);
    std::printf("node %s follows policy %s: %zu rules, then %s\n", c.name.c_str(), c.policy.c_str(), policy->rules().size(),
                policy->default_rule().refuse ? "refuses anything else" : "runs anything else by its default rule");
    options.policy = std::make_shared<const Policy>(std::move(*policy));
  }
  apply_tls(c.tls, options);
  options.insecure_plain_tcp = c.insecure;
  options.http = c.http;
  if (options.tls.enabled()) {
    // Checked here too, so that a bad TLS directory stops the daemon before anything starts.
    auto tls = make_tls_context(options.tls);
    if (!tls) return fail(tls.error(), false);
    const PeerIdentity& self = tls_local_identity(**tls);
    std::printf("node %s serves mutual TLS as '%s' (key %s), trusting %s\n", c.name.c_str(), self.name.c_str(),
                self.fingerprint.c_str(), tls_trust_summary(**tls).c_str());
  }
  Node node(options);
  // Where its state lives; a data dir whose store cannot be used stops it here, before it
  // serves anything it would then lose.
  auto storage = node.storage();
  if (!storage) return fail(storage.error(), false);
  std::printf("node %s stores its state %s%s\n", c.name.c_str(), options.data_dir.empty() ? "" : "in ", storage->c_str());
  for (const auto& spec : c.publish) {
    auto eq = spec.find('=');
    const std::string path = eq == std::string::npos ? spec : spec.substr(eq + 1);
    const std::string name = eq == std::string::npos ? file_stem(spec) : spec.substr(0, eq);
    auto source = read_file(path);
    if (!source) return fail(source.error(), false);
    auto hash = node.publish(name, *source);
    if (!hash) return fail(hash.error(), false);
    std::printf("node %s publishes module %s (%s)\n", c.name.c_str(), name.c_str(), hash->substr(0, 12).c_str());
  }
  if (auto seeded = seed_data(node, c.data); !seeded) return fail(seeded.error(), false);
  // The jails (the zygote, the master VM) start before the first request, not during it.
  const IsolationLevels levels = node.isolation_levels();
  const std::string why = levels.why_missing();
  const Isolation peer_level = node.peer_isolation();
  const bool has_peer_level = levels.has(peer_level);
  // With a policy, its rules pick the levels (and refuse code whose levels are missing).
  if (!has_peer_level && !options.policy) {
    return fail(make_error(Errc::sandbox_refused, "refused by the sandbox: isolation level '" +
                                                      std::string(isolation_name(peer_level)) +
                                                      "' for code from peers is not available here (" + why +
                                                      "); run with --peer-isolation trusted only if every peer is trusted"),
                false);
  }
  if (options.policy) {
    std::string have;
    for (Isolation level : levels.available) have += (have.empty() ? "" : ", ") + std::string(isolation_name(level));
    std::printf("node %s runs code from peers as its policy says (levels here: %s%s)\n", c.name.c_str(), have.c_str(),
                why.empty() ? "" : ("; missing: " + why).c_str());
  } else {
    std::printf("node %s runs code from peers at '%s'%s\n", c.name.c_str(), std::string(isolation_name(peer_level)).c_str(),
                why.empty() ? "" : (" (" + why + ")").c_str());
  }
  if (peer_level == Isolation::trusted && !options.policy) {
    log_warn("node", c.name + ": --peer-isolation trusted: code from every peer runs in this process, unjailed");
  }
  for (const auto& where : c.listen) {
    auto bound = node.listen(where);
    if (!bound) {
      print_error(bound.error());
      return exit_code_for(bound.error());
    }
    std::printf("node %s listening on %s\n", c.name.c_str(), bound->c_str());
  }
  if (const std::string http = node.http_address(); !http.empty()) {
    std::printf("node %s dashboard at %s://%s/ (metrics at /metrics)\n", c.name.c_str(), c.tls.dir.empty() ? "http" : "https",
                http.c_str());
  }
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::printf("node %s stopping (%s)\n", c.name.c_str(), sig == SIGINT ? "SIGINT" : "SIGTERM");
  std::fflush(stdout);
  node.shutdown(std::chrono::milliseconds(c.grace_ms));
  auto s = node.stats();
  std::printf("node %s stopped after serving %llu calls and %llu evaluations\n", c.name.c_str(),
              static_cast<unsigned long long>(s.calls_served), static_cast<unsigned long long>(s.evals_served));
  return exit_ok;
}

int run_call(const CallCommand& c) {
  auto args = parse_args(c.args_json);
  if (!args) return fail(args.error(), c.json);
  NodeOptions options;
  options.name = "cli";
  options.worker_threads = 1;
  options.request_timeout = std::chrono::milliseconds(c.timeout_ms);
  apply_tls(c.tls, options);
  Node client(options);
  auto result = client.call(c.peer, c.service, *args);
  if (!result) return fail(result.error(), c.json);
  if (c.json) std::printf("{\"ok\":true,\"result\":%s}\n", render(*result).c_str());
  else std::printf("%s\n", render(*result).c_str());
  return exit_ok;
}

int run_eval(const EvalCommand& c) {
  std::string source = c.code, chunk = "eval";
  if (!c.file.empty()) {
    auto text = read_file(c.file);
    if (!text) return fail(text.error(), c.json);
    source = std::move(*text);
    auto slash = c.file.find_last_of('/');
    chunk = slash == std::string::npos ? c.file : c.file.substr(slash + 1);
  }
  auto args = parse_args(c.args_json);
  if (!args) return fail(args.error(), c.json);
  auto isolation = parse_isolation(c.isolation);
  if (!isolation) return fail(isolation.error(), c.json);
  NodeOptions options;
  options.name = "cli";
  options.worker_threads = 1;
  apply_tls(c.tls, options);
  Node client(options);
  EvalOptions eo;
  eo.limits = Limits{c.cpu, c.memory, c.wall_ms};
  eo.isolation = *isolation;
  eo.chunk_name = chunk;
  eo.timeout = std::chrono::milliseconds(c.timeout_ms);
  if (!c.sign.empty()) {
    auto key = SigningKey::load(c.sign);
    if (!key) return fail(key.error(), c.json);
    eo.signing_key = std::make_shared<const SigningKey>(std::move(*key));
  }
  auto answer = client.eval(c.peer, source, *args, eo);
  if (!answer) return fail(answer.error(), c.json);
  const Value& results = answer->results;
  if (c.json) {
    std::printf("{\"ok\":true,\"results\":%s,\"isolation\":\"%s\"}\n", render(results).c_str(),
                std::string(isolation_name(answer->isolation)).c_str());
  } else {
    for (std::size_t i = 1; i <= results.length(); ++i) std::printf("%s\n", render(results.get(static_cast<std::int64_t>(i))).c_str());
  }
  return exit_ok;
}

}  // namespace sojourn::cli
