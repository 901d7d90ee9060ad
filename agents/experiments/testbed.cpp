// The experiments' two-node testbed and the four ways of doing one task (testbed.hpp).
#include "agents/experiments/testbed.hpp"

#include <chrono>
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
  if (link_) {
    // "*" for the data node; the data node's exact address for the client (its calls to itself,
    // launching and waiting for its agent, cross no link).
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
  client_ = std::make_unique<Node>(node_options("client", data_address_));
  // cod runs the code at the client, on the client's own copy of the data.
  client_->register_service("data.get", data_service(reply_bytes_));
  auto here = client_->listen("127.0.0.1:0");
  if (!here) return here.error();
  client_address_ = *here;
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
