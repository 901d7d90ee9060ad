// The experiments' two-node testbed and the four ways of doing one task (testbed.hpp).
#include "agents/experiments/testbed.hpp"

#include <chrono>
#include <fstream>
#include <optional>

#include "sojourn/core/bundle.hpp"
#include "sojourn/transports/address.hpp"

namespace sojourn::experiments {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// The data service: one interaction's reply, of the size the run asks.
Service data_service(std::shared_ptr<std::atomic<std::uint64_t>> reply_bytes) {
  return [reply_bytes](const Value&) -> Result<Value> { return Value(std::string(reply_bytes->load(), 'd')); };
}

}  // namespace

Testbed::Testbed(const LinkSpec* link, std::uint64_t seed, std::string trace_dir)
    : seed_(seed), trace_dir_(std::move(trace_dir)) {
  if (link) link_ = *link;
}

Testbed::~Testbed() {
  if (client_) client_->shutdown(std::chrono::milliseconds(0));
  if (data_) data_->shutdown(std::chrono::milliseconds(0));
}

NodeOptions Testbed::node_options(const std::string& name, const std::string& rule_to) const {
  auto to = parse_address(rule_to);
  NodeOptions o;
  o.name = name;
  // Both nodes are this process's own: the trusted level keeps jail start-up out of the figures
  // (the fixed costs are calibrated at the same level).
  o.peer_isolation = Isolation::trusted;
  o.request_timeout = std::chrono::minutes(10);
  o.transfer_lifetime = std::chrono::minutes(4);  // within max_message_lifetime
  o.max_payload = 256u << 20;
  // Room for the migration-cost experiment's biggest states (64 MB) in a step.
  o.default_limits.memory_bytes = 1u << 30;
  o.default_limits.wall_ms = 120'000;
  o.max_limits.memory_bytes = 2u << 30;
  o.max_limits.wall_ms = 300'000;
  if (link_) {
    // "*" for the data node, "127.0.0.1" for the client.
    if (to) {
      o.links.rules.push_back(LinkRule{to->host, to->port, *link_});
    } else {
      o.links.rules.push_back(LinkRule{rule_to, std::nullopt, *link_});
    }
    o.links.seed = seed_;
    o.links.sent_bytes = wire_bytes_;
  }
  if (!trace_dir_.empty()) o.trace = trace_dir_ + "/" + name + ".jsonl";
  return o;
}

Result<void> Testbed::start() {
  // The data node applies the link to whatever it sends (replies, agents going home); the
  // client to what it sends to the data node.
  data_ = std::make_unique<Node>(node_options("data", "*"));
  data_->register_service("data.get", data_service(reply_bytes_));
  auto at = data_->listen("127.0.0.1:0");
  if (!at) return at.error();
  data_address_ = *at;
  client_ = std::make_unique<Node>(node_options("client", "127.0.0.1"));
  // cod runs the code at the client, on the client's own copy of the data.
  client_->register_service("data.get", data_service(reply_bytes_));
  auto here = client_->listen("127.0.0.1:0");
  if (!here) return here.error();
  client_address_ = *here;
  // The client applies its link to every loopback destination, so replies to the data node's
  // own connections (its reports home) cross it too; its calls to itself (launching, waiting for
  // its agents, at its advertised address) never touch the network.
  return warm_up();
}

Result<void> Testbed::warm_up() {
  Task tiny{1, 10, 10, 100};
  for (Paradigm p : kParadigms) {
    auto r = run(p, tiny);
    if (!r) return r.error();
  }
  return {};
}

std::string Testbed::task_code(const Task& t, const std::string& shape) {
  // Padding first: a comment that makes the code `code_bytes` long and new (its hash differs
  // each run, so no cache spares the transfer).
  std::string code = "-- sojourn experiment task, version " + std::to_string(++version_) + "\n";
  std::string body = shape;
  while (code.size() + body.size() + 1 < t.code_bytes) code += std::string(std::min<std::size_t>(79, t.code_bytes - code.size() - body.size() - 1), '-') + "\n";
  return code + body;
}

Result<double> Testbed::run_cs(const Task& t) {
  const Value args = Value::array({Value(std::string(t.request_bytes, 'r'))});
  auto t0 = Clock::now();
  for (std::uint32_t i = 0; i < t.interactions; ++i) {
    auto r = client_->call(data_address_, "data.get", args);
    if (!r) return r.error();
  }
  return ms_since(t0);
}

Result<double> Testbed::run_rev(const Task& t) {
  const std::string code = task_code(t, R"(local n, req = ...
local pad = string.rep("r", req)
local total = 0
for i = 1, n do total = total + #node.call("data.get", pad) end
return total
)");
  EvalOptions eo;
  eo.isolation = Isolation::trusted;
  auto t0 = Clock::now();
  auto r = client_->eval(data_address_, code, Value::array({Value(static_cast<std::int64_t>(t.interactions)),
                                                           Value(static_cast<std::int64_t>(t.request_bytes))}), eo);
  if (!r) return r.error();
  return ms_since(t0);
}

Result<double> Testbed::run_cod(const Task& t) {
  const std::string code = task_code(t, R"(local n, req = ...
local pad = string.rep("r", req)
local total = 0
for i = 1, n do total = total + #node.call("data.get", pad) end
return total
)");
  auto published = data_->publish("experiment-task", code);
  if (!published) return published.error();
  auto t0 = Clock::now();
  auto fetched = client_->fetch(data_address_, "experiment-task");
  if (!fetched) return fetched.error();
  EvalOptions eo;
  eo.isolation = Isolation::trusted;
  auto r = client_->run_module(*fetched, Value::array({Value(static_cast<std::int64_t>(t.interactions)),
                                                       Value(static_cast<std::int64_t>(t.request_bytes))}), eo);
  if (!r) return r.error();
  return ms_since(t0);
}

Result<double> Testbed::run_ma(const Task& t) {
  const std::string code = task_code(t, R"(local M = {}
function M.start(s) agent.go(s.data, "work") end
function M.work(s)
  local pad = string.rep("r", s.req)
  local total = 0
  for i = 1, s.n do total = total + #node.call("data.get", pad) end
  s.total = total
  agent.go(agent.home, "done")
end
function M.done(s) return s.total end
return M
)");
  auto bundle = single_file_bundle("experiment-agent", code);
  if (!bundle) return bundle.error();
  AgentLaunch launch;
  launch.bundle = std::move(*bundle);
  launch.owner = "experiment";
  launch.state = Value::table();
  launch.state.set("data", data_address_);
  launch.state.set("n", static_cast<std::int64_t>(t.interactions));
  launch.state.set("req", static_cast<std::int64_t>(t.request_bytes));
  auto t0 = Clock::now();
  auto id = client_->launch(client_address_, std::move(launch));
  if (!id) return id.error();
  auto status = client_->wait_agent(client_address_, *id, std::chrono::minutes(10));
  if (!status) return status.error();
  if (status->status != AgentState::finished) {
    return make_error(Errc::service_failed, "service experiment failed: its agent did not finish: " + status->reason);
  }
  return ms_since(t0);
}

namespace {

// The unix_us of the first event of `kind` about `agent` in a node's trace file.
std::optional<std::int64_t> event_time(const std::string& path, const std::string& agent, const std::string& kind) {
  std::ifstream in(path);
  const std::string want_agent = "\"agent\":\"" + agent + "\"", want_kind = "\"kind\":\"" + kind + "\"";
  for (std::string line; std::getline(in, line);) {
    if (line.find(want_agent) == std::string::npos || line.find(want_kind) == std::string::npos) continue;
    auto at = line.find("\"unix_us\":");
    if (at == std::string::npos) continue;
    return std::stoll(line.substr(at + 10));
  }
  return std::nullopt;
}

}  // namespace

Result<Testbed::MigrationRun> Testbed::run_migration(std::uint64_t state_bytes) {
  auto bundle = single_file_bundle("migration-cost", "local M = {}\n"
                                   "function M.start(s) agent.go(s.data, \"there\") end\n"
                                   "function M.there(s) return #s.blob end\n"
                                   "return M\n");
  if (!bundle) return bundle.error();
  AgentLaunch launch;
  launch.bundle = std::move(*bundle);
  launch.owner = "experiment";
  launch.state = Value::table();
  launch.state.set("data", data_address_);
  launch.state.set("blob", std::string(state_bytes, 's'));
  const std::uint64_t before = wire_bytes_->load();
  auto t0 = Clock::now();
  auto id = client_->launch(client_address_, std::move(launch));
  if (!id) return id.error();
  auto status = client_->wait_agent(client_address_, *id, std::chrono::minutes(10));
  if (!status) return status.error();
  if (status->status != AgentState::finished) {
    return make_error(Errc::service_failed, "service experiment failed: its agent did not finish: " + status->reason);
  }
  MigrationRun run;
  run.measured_ms = ms_since(t0);
  run.wire_bytes = wire_bytes_->load() - before;
  auto left = event_time(trace_dir_ + "/client.jsonl", *id, "departure");
  auto arrived = event_time(trace_dir_ + "/data.jsonl", *id, "arrival");
  if (left && arrived) run.downtime_ms = static_cast<double>(*arrived - *left) / 1000.0;
  return run;
}

Result<RunResult> Testbed::run(Paradigm p, const Task& task) {
  reply_bytes_->store(task.reply_bytes);
  const std::uint64_t before = wire_bytes_->load();
  Result<double> took = make_error(Errc::invalid_argument, "invalid argument: no paradigm");
  switch (p) {
    case Paradigm::cs: took = run_cs(task); break;
    case Paradigm::rev: took = run_rev(task); break;
    case Paradigm::cod: took = run_cod(task); break;
    case Paradigm::ma: took = run_ma(task); break;
  }
  if (!took) return took.error();
  return RunResult{*took, wire_bytes_->load() - before};
}

}  // namespace sojourn::experiments
