// `sojourn fetch`, `launch`, `ps`, `locate` and `send`: code-on-demand and mobile agents
// from the command line.
#include <cstdio>
#include <ctime>
#include <sstream>

#include "agents/cli/commands.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/json.hpp"
#include "sojourn/core/signature.hpp"

namespace sojourn::cli {

namespace {

Node client_node(const TlsFlags& tls, std::string cache_dir = {}) {
  NodeOptions options;
  options.name = "cli";
  apply_tls(tls, options);
  options.worker_threads = 1;
  options.code_cache_dir = std::move(cache_dir);
  return Node(options);
}

std::string default_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg) return std::string(xdg) + "/sojourn/code";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home) return std::string(home) + "/.cache/sojourn/code";
  return {};
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string clock_time(std::int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(unix_ms % 1000));
  return buf;
}

// A strong hop also shows its heap image: the raw arena span and the sealed image (what
// travels) it left with, and the host's time imaging it there and restoring it on arrival.
void print_itinerary(const AgentStatus& s) {
  std::printf("itinerary (%zu stops):\n", s.hops.size());
  std::printf("  %-5s %-22s %-12s %9s %12s  %-9s %-8s %10s %10s %9s %10s\n", "epoch", "node", "arrived", "spent_ms",
              "state_bytes", "isolation", "mobility", "image_raw", "image_wire", "image_us", "restore_us");
  for (const auto& h : s.hops) {
    std::printf("  %-5llu %-22s %-12s %9lld %12llu  %-9s %-8s %10llu %10llu %9llu %10llu\n",
                static_cast<unsigned long long>(h.epoch), h.node.c_str(), clock_time(h.arrived_unix_ms).c_str(),
                static_cast<long long>(h.spent_ms), static_cast<unsigned long long>(h.state_bytes), h.isolation.c_str(),
                h.mobility.c_str(), static_cast<unsigned long long>(h.image_raw_bytes),
                static_cast<unsigned long long>(h.image_bytes), static_cast<unsigned long long>(h.image_us),
                static_cast<unsigned long long>(h.restore_us));
  }
}

}  // namespace

int report_when_done(Node& node, const std::string& home, const std::string& agent_id, std::uint32_t timeout_ms, bool json);

int run_fetch(const FetchCommand& c) {
  auto args = value_from_json(c.args_json);
  if (!args) return fail(args.error(), c.json);
  Node node = client_node(c.tls, c.cache_dir.empty() ? default_cache_dir() : c.cache_dir);
  if (auto seeded = seed_data(node, c.data); !seeded) return fail(seeded.error(), c.json);
  auto module = node.fetch(c.peer, c.module);
  if (!module) return fail(module.error(), c.json);
  std::size_t code_bytes = 0;
  for (const auto& [file, source] : module->bundle.files) code_bytes += source.size();
  std::fprintf(stderr, "fetched %s %s from %s: %s\n", c.module.c_str(), module->hash.substr(0, 12).c_str(), c.peer.c_str(),
               module->from_cache ? "cached here, no code sent" : (std::to_string(code_bytes) + " bytes of code").c_str());
  auto result = node.run_module(*module, args->is_table() ? *args : Value::table());
  if (!result) return fail(result.error(), c.json);
  if (c.json) {
    std::printf("{\"ok\":true,\"hash\":\"%s\",\"cached\":%s,\"results\":%s}\n", module->hash.c_str(),
                module->from_cache ? "true" : "false", render(*result).c_str());
  } else {
    for (std::size_t i = 1; i <= result->length(); ++i) std::printf("%s\n", render(result->get(static_cast<std::int64_t>(i))).c_str());
  }
  return exit_ok;
}

int run_launch(const LaunchCommand& c) {
  auto source = read_file(c.file);
  if (!source) return fail(source.error(), c.json);
  auto bundle = single_file_bundle(file_stem(c.file), *source);
  if (!bundle) return fail(bundle.error(), c.json);
  // Quotas go in the manifest, which a signature covers.
  bundle->manifest.max_hops = c.max_hops;
  bundle->manifest.quotas.cpu_instructions = c.cpu;
  bundle->manifest.cpu_budget = c.cpu_budget;
  auto state = value_from_json(c.state_json);
  if (!state) return fail(state.error(), c.json);
  if (!state->is_table()) {
    return fail(errors::invalid_argument("--state must be a JSON object or array"), c.json);
  }
  AgentLaunch launch;
  launch.bundle = std::move(*bundle);
  launch.entry = c.entry;
  launch.state = *state;
  launch.itinerary = split_list(c.itinerary);
  if (!c.owner.empty()) launch.owner = c.owner;
  else if (const char* user = std::getenv("USER"); user != nullptr && *user) launch.owner = user;
  launch.max_hops = c.max_hops;
  if (c.strong) launch.mobility = Mobility::strong;
  if (!c.sign.empty()) {
    auto key = SigningKey::load(c.sign);
    if (!key) return fail(key.error(), c.json);
    launch.signing_key = std::make_shared<const SigningKey>(std::move(*key));
  }
  Node node = client_node(c.tls);
  auto id = node.launch(c.at, launch);
  if (!id) return fail(id.error(), c.json);
  if (!c.wait) {
    if (c.json) std::printf("{\"ok\":true,\"id\":\"%s\",\"home\":\"%s\"}\n", id->c_str(), c.at.c_str());
    else std::printf("%s\n", id->c_str());
    return exit_ok;
  }
  return report_when_done(node, c.at, *id, c.timeout_ms, c.json);
}

int report_when_done(Node& node, const std::string& home, const std::string& agent_id, std::uint32_t timeout_ms, bool json) {
  auto status = node.wait_agent(home, agent_id, std::chrono::milliseconds(timeout_ms));
  if (!status) return fail(status.error(), json);
  const bool finished = status->status == AgentState::finished;
  const std::string state(agent_state_name(status->status));
  if (json) {
    std::printf("{\"ok\":%s,\"agent\":%s}\n", finished ? "true" : "false", render(to_value(*status)).c_str());
  } else {
    std::printf("agent %s %s at %s (epoch %llu)\n", agent_id.c_str(), state.c_str(), status->location.c_str(),
                static_cast<unsigned long long>(status->epoch));
    if (!status->reason.empty()) std::printf("reason: %s\n", status->reason.c_str());
    for (std::size_t i = 1; i <= status->result.length(); ++i) {
      std::printf("result: %s\n", render(status->result.get(static_cast<std::int64_t>(i))).c_str());
    }
    print_itinerary(*status);
    for (const auto& line : status->log) std::printf("log: %s\n", line.c_str());
  }
  if (finished) return exit_ok;
  // The agent failed or is stranded: the remote side's error, already printed above.
  return json ? exit_remote : fail(make_error(Errc::migration_failed, "agent " + agent_id + " " + state), false);
}

int run_wait(const WaitCommand& c) {
  Node node = client_node(c.tls);
  return report_when_done(node, c.home, c.agent_id, c.timeout_ms, c.json);
}

int run_ps(const AgentCommand& c) {
  Node node = client_node(c.tls);
  auto agents = node.list_agents(c.peer);
  if (!agents) return fail(agents.error(), c.json);
  if (c.json) {
    Value list = Value::table();
    for (const auto& a : *agents) {
      Value v = list.new_table();
      v.set("id", a.id);
      v.set("owner", a.owner);
      v.set("home", a.home);
      v.set("epoch", static_cast<std::int64_t>(a.epoch));
      v.set("since_unix_ms", a.since_unix_ms);
      v.set("state_bytes", static_cast<std::int64_t>(a.state_bytes));
      v.set("status", std::string(agent_state_name(a.status)));
      if (!a.reason.empty()) v.set("reason", a.reason);
      v.set("isolation", a.isolation);
      v.set("mobility", a.mobility);
      v.set("image_bytes", static_cast<std::int64_t>(a.image_bytes));
      list.push(v);
    }
    std::printf("{\"ok\":true,\"agents\":%s}\n", render(list).c_str());
    return exit_ok;
  }
  std::printf("%-32s %-10s %5s %-12s %11s %-9s %-8s %11s %s\n", "ID", "OWNER", "EPOCH", "SINCE", "STATE_BYTES", "ISOLATION",
              "MOBILITY", "IMAGE_BYTES", "STATUS");
  for (const auto& a : *agents) {
    const std::string state = std::string(agent_state_name(a.status)) + (a.reason.empty() ? "" : ": " + a.reason);
    std::printf("%-32s %-10s %5llu %-12s %11llu %-9s %-8s %11llu %s\n", a.id.c_str(), a.owner.c_str(),
                static_cast<unsigned long long>(a.epoch), clock_time(a.since_unix_ms).c_str(),
                static_cast<unsigned long long>(a.state_bytes), a.isolation.c_str(), a.mobility.c_str(),
                static_cast<unsigned long long>(a.image_bytes), state.c_str());
  }
  return exit_ok;
}

int run_locate(const AgentCommand& c) {
  Node node = client_node(c.tls);
  auto status = node.agent_status(c.home, c.agent_id);
  if (!status) return fail(status.error(), c.json);
  if (c.json) {
    std::printf("{\"ok\":true,\"agent\":%s}\n", render(to_value(*status)).c_str());
  } else {
    std::printf("%s %s at %s (epoch %llu)%s%s\n", status->id.c_str(), std::string(agent_state_name(status->status)).c_str(),
                status->location.c_str(),
                static_cast<unsigned long long>(status->epoch), status->reason.empty() ? "" : ": ", status->reason.c_str());
  }
  return exit_ok;
}

int run_send(const AgentCommand& c) {
  auto message = value_from_json(c.message_json);
  if (!message) return fail(message.error(), c.json);
  Node node = client_node(c.tls);
  auto id = node.send_to_agent(c.home, c.agent_id, *message);
  if (!id) return fail(id.error(), c.json);
  if (c.json) std::printf("{\"ok\":true,\"message_id\":\"%s\"}\n", id->c_str());
  else std::printf("message %s queued for agent %s\n", id->c_str(), c.agent_id.c_str());
  return exit_ok;
}

}  // namespace sojourn::cli
