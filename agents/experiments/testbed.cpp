// The experiments' two-node testbed and the four ways of doing one task (testbed.hpp).
#include "agents/experiments/testbed.hpp"

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

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

// Launches an experiment's agent from `client` (its own home) and waits for it to finish.
Result<AgentStatus> launch_and_wait(Node& client, const std::string& address, AgentLaunch launch) {
  auto id = client.launch(address, std::move(launch));
  if (!id) return id.error();
  auto status = client.wait_agent(address, *id, std::chrono::minutes(10));
  if (!status) return status.error();
  if (status->status != AgentState::finished) {
    return make_error(Errc::service_failed, "service experiment failed: its agent did not finish: " + status->reason);
  }
  return status;
}

}  // namespace

Testbed::Testbed(const LinkSpec* link, std::uint64_t seed, std::string trace_dir, Isolation level)
    : seed_(seed), trace_dir_(std::move(trace_dir)), level_(level) {
  if (link) link_ = *link;
}

Testbed::~Testbed() {
  if (client_) client_->shutdown(std::chrono::milliseconds(0));
  if (data_) data_->shutdown(std::chrono::milliseconds(0));
}

namespace {

// A testbed node: trusted, roomy limits, the link applied to `rule_to` ("*", a host or
// HOST:PORT) and counted in `wire_bytes`, its trace in TRACE_DIR/NAME.jsonl.
NodeOptions testbed_node_options(const std::string& name, const std::string& rule_to, const std::optional<LinkSpec>& link,
                                 std::uint64_t seed, const std::shared_ptr<std::atomic<std::uint64_t>>& wire_bytes,
                                 const std::string& trace_dir, Isolation level = Isolation::trusted) {
  auto to = parse_address(rule_to);
  NodeOptions o;
  o.name = name;
  // Both nodes are this process's own: the trusted level keeps jail start-up out of the figures
  // (the fixed costs are calibrated at the same level).
  o.peer_isolation = level;
  o.request_timeout = std::chrono::minutes(10);
  o.transfer_lifetime = std::chrono::minutes(4);  // within max_message_lifetime
  o.max_payload = 256u << 20;
  // Room for the migration-cost experiment's biggest states (64 MB) in a step.
  o.default_limits.memory_bytes = 1u << 30;
  o.default_limits.wall_ms = 120'000;
  o.max_limits.memory_bytes = 2u << 30;
  o.max_limits.wall_ms = 300'000;
  if (link) {
    // "*" for the data node, "127.0.0.1" for the client.
    if (to) {
      o.links.rules.push_back(LinkRule{to->host, to->port, *link});
    } else {
      o.links.rules.push_back(LinkRule{rule_to, std::nullopt, *link});
    }
    o.links.seed = seed;
    o.links.sent_bytes = wire_bytes;
  }
  if (!trace_dir.empty()) o.trace = trace_dir + "/" + name + ".jsonl";
  return o;
}

}  // namespace

NodeOptions Testbed::node_options(const std::string& name, const std::string& rule_to) const {
  NodeOptions o = testbed_node_options(name, rule_to, link_, seed_, wire_bytes_, trace_dir_, level_);
  if (level_ != Isolation::trusted) {
    // A strong agent's arena is its step's memory limit: room for the biggest state, not more.
    o.default_limits.memory_bytes = 512u << 20;
  }
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
  // A migration-cost hop's code is the same each run: taken to the data node here, as any
  // later hop finds it (the model counts no BundleWanted for these hops).
  if (level_ != Isolation::trusted) {
    auto hop = run_migration(1000, true);
    if (!hop) return hop.error();
    return {};
  }
  if (auto hop = run_migration(1000, false); !hop) return hop.error();
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
  auto status = launch_and_wait(*client_, client_address_, std::move(launch));
  if (!status) return status.error();
  return ms_since(t0);
}

namespace {

// The testbed's nodes share this process and so one steady clock: phases are measured on
// mono_ns, which a step of the wall clock (NTP on a fresh machine) cannot stretch.
struct TraceEvent {
  std::int64_t mono_ns = 0;
  std::string detail;
};

// The first event of `kind` about `agent` in a node's trace file.
std::optional<TraceEvent> find_event(const std::string& path, const std::string& agent, const std::string& kind) {
  std::ifstream in(path);
  const std::string want_agent = "\"agent\":\"" + agent + "\"", want_kind = "\"kind\":\"" + kind + "\"";
  for (std::string line; std::getline(in, line);) {
    if (line.find(want_agent) == std::string::npos || line.find(want_kind) == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("mono_ns") || !j["mono_ns"].is_number_integer()) continue;
    return TraceEvent{j["mono_ns"].get<std::int64_t>(), j.value("detail", "")};
  }
  return std::nullopt;
}

// NAME=NUMBER in an event's detail ("raw_bytes=1024 compressed_bytes=..."); 0 when absent.
std::uint64_t detail_number(const std::string& detail, const std::string& name) {
  auto at = detail.find(name + "=");
  if (at == std::string::npos) return 0;
  return std::strtoull(detail.c_str() + at + name.size() + 1, nullptr, 10);
}

}  // namespace

Result<Testbed::MigrationRun> Testbed::run_migration(std::uint64_t state_bytes, bool strong) {
  AgentLaunch launch;
  if (strong) {
    // The string lives in the heap: agent.go seals the heap into an image, which goes on at
    // the next line at the data node.
    auto bundle = single_file_bundle("migration-cost-strong", "function start(s)\n"
                                     "  local blob = string.rep(\"s\", s.bytes)\n"
                                     "  agent.go(s.data)\n"
                                     "  return #blob\n"
                                     "end\n", {"start"});
    if (!bundle) return bundle.error();
    launch.bundle = std::move(*bundle);
    launch.mobility = Mobility::strong;
    launch.state = Value::table();
    launch.state.set("bytes", static_cast<std::int64_t>(state_bytes));
  } else {
    auto bundle = single_file_bundle("migration-cost", "local M = {}\n"
                                     "function M.start(s) agent.go(s.data, \"there\") end\n"
                                     "function M.there(s) return #s.blob end\n"
                                     "return M\n");
    if (!bundle) return bundle.error();
    launch.bundle = std::move(*bundle);
    launch.state = Value::table();
    launch.state.set("blob", std::string(state_bytes, 's'));
  }
  launch.owner = "experiment";
  launch.state.set("data", data_address_);
  const std::uint64_t before = wire_bytes_->load();
  auto t0 = Clock::now();
  auto status = launch_and_wait(*client_, client_address_, std::move(launch));
  if (!status) return status.error();
  MigrationRun run;
  run.measured_ms = ms_since(t0);
  run.wire_bytes = wire_bytes_->load() - before;
  if (trace_dir_.empty()) return run;  // calibration: no traces, the hop's time only
  // The phases, from the two nodes' traces (docs/experiments.md, "migration-cost").
  const std::string src = trace_dir_ + "/client.jsonl", dst = trace_dir_ + "/data.jsonl";
  auto at = [&](const std::string& path, const char* kind) -> Result<TraceEvent> {
    auto e = find_event(path, status->id, kind);
    if (!e) return errors::invalid_argument(std::string("no '") + kind + "' event of agent " + status->id + " in " + path);
    return *e;
  };
  auto ms = [](const TraceEvent& from, const TraceEvent& to) { return static_cast<double>(to.mono_ns - from.mono_ns) / 1e6; };
  const char* src_kinds[] = {"departure", "addressed", "serialize_start", "serialize_end", "transfer_sent"};
  const char* dst_kinds[] = {"transfer_received", "restore_start", "restore_end", "arrival"};
  std::map<std::string, TraceEvent> e;
  for (const char* k : src_kinds) {
    auto got = at(src, k);
    if (!got) return got.error();
    e[k] = *got;
  }
  for (const char* k : dst_kinds) {
    auto got = at(dst, k);
    if (!got) return got.error();
    e[k] = *got;
  }
  // A strong step seals the heap before its departure and restores it after its arrival.
  double sealed_ms = 0, restored_ms = 0;
  if (strong) {
    auto sealed = at(src, "image_sealed");
    if (!sealed) return sealed.error();
    auto restored = at(dst, "image_restored");
    if (!restored) return restored.error();
    sealed_ms = static_cast<double>(detail_number(sealed->detail, "image_us")) / 1000.0;
    restored_ms = static_cast<double>(detail_number(restored->detail, "restore_us")) / 1000.0;
  }
  // Learning the destination's node id: nothing on a link whose id is known (the warm-up's).
  run.address_ms = ms(e["departure"], e["addressed"]);
  run.serialize_ms = ms(e["serialize_start"], e["serialize_end"]) + sealed_ms;
  run.transfer_ms = ms(e["transfer_sent"], e["transfer_received"]);
  run.restore_ms = ms(e["restore_start"], e["restore_end"]) + restored_ms;
  run.resume_ms = ms(e["restore_end"], e["arrival"]);
  run.downtime_ms = ms(e["departure"], e["arrival"]) + sealed_ms + restored_ms;
  run.raw_bytes = detail_number(e["serialize_end"].detail, "raw_bytes");
  run.compressed_bytes = detail_number(e["serialize_end"].detail, "compressed_bytes");
  run.transfer_bytes = detail_number(e["serialize_end"].detail, "transfer_bytes");
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

// ---- the itinerary testbed ----

namespace {

// The number a run's code returned: a number, or the first of an array of results.
std::optional<std::int64_t> first_integer(const Value& v) {
  if (v.is_number()) return static_cast<std::int64_t>(v.as_number());
  if (v.is_table()) {
    Value first = v.get(Value(static_cast<std::int64_t>(1)));
    if (first.is_number()) return static_cast<std::int64_t>(first.as_number());
  }
  return std::nullopt;
}

// The query each paradigm makes at a data node: its data's size (the code reduces the data
// to a number; client-server brings the data home to count it).
constexpr const char* kVisitCode = R"(local req = ...
return #node.call("data.get", string.rep("r", req))
)";

constexpr const char* kItineraryAgent = R"(local M = {}
function M.start(s) s.total = 0; agent.go(agent.itinerary[1], "visit") end
function M.visit(s)
  s.total = s.total + #node.call("data.get", string.rep("r", s.req))
  if agent.itinerary[1] then agent.go(agent.itinerary[1], "visit") else agent.go(agent.home, "done") end
end
function M.done(s) return s.total end
return M
)";

}  // namespace

ItineraryTestbed::ItineraryTestbed(const LinkSpec& link, std::uint32_t nodes, std::uint64_t seed, std::string trace_dir)
    : link_(link), nodes_(nodes), seed_(seed), trace_dir_(std::move(trace_dir)) {}

ItineraryTestbed::~ItineraryTestbed() {
  if (client_) client_->shutdown(std::chrono::milliseconds(0));
  for (auto& d : data_) d->shutdown(std::chrono::milliseconds(0));
}

Result<void> ItineraryTestbed::start() {
  const std::optional<LinkSpec> link = link_;
  for (std::uint32_t i = 0; i < nodes_; ++i) {
    // Every node applies the link to all it sends on loopback: to the client and to the other
    // data nodes alike (its calls to itself never touch the network).
    auto node = std::make_unique<Node>(testbed_node_options("data-" + std::to_string(i + 1), "127.0.0.1", link,
                                                            seed_ + i + 1, wire_bytes_, trace_dir_));
    node->register_service("data.get", data_service(data_bytes_));
    auto at = node->listen("127.0.0.1:0");
    if (!at) return at.error();
    data_addresses_.push_back(*at);
    data_.push_back(std::move(node));
  }
  client_ = std::make_unique<Node>(testbed_node_options("client", "127.0.0.1", link, seed_, wire_bytes_, trace_dir_));
  auto here = client_->listen("127.0.0.1:0");
  if (!here) return here.error();
  client_address_ = *here;
  // Warm: every connection a run of any K uses (client -> each node, each node -> the next
  // and -> the client), opened before any clock starts, and every node id an agent's hop is
  // addressed to learned (a hop from node i home: a tour of node i alone).
  for (Paradigm p : {Paradigm::cs, Paradigm::rev, Paradigm::ma}) {
    auto r = run(p, nodes_, 10);
    if (!r) return r.error();
  }
  for (std::uint32_t i = 0; i + 1 < nodes_; ++i) {
    auto r = run_tour({data_addresses_[i]});
    if (!r) return r.error();
  }
  return {};
}

std::string ItineraryTestbed::padded(const std::string& body) {
  // A comment that makes the code kCodeBytes long and new each run (cold at every node).
  std::string code = "-- sojourn itinerary task, version " + std::to_string(++version_) + "\n";
  while (code.size() + body.size() + 1 < kCodeBytes) {
    code += std::string(std::min<std::size_t>(79, kCodeBytes - code.size() - body.size() - 1), '-') + "\n";
  }
  return code + body;
}

Result<std::int64_t> ItineraryTestbed::run_cs(std::uint32_t k) {
  const Value args = Value::array({Value(std::string(kRequestBytes, 'r'))});
  std::int64_t total = 0;
  for (std::uint32_t i = 0; i < k; ++i) {
    auto r = client_->call(data_addresses_[i], "data.get", args);
    if (!r) return r.error();
    if (!r->is_string()) return errors::invalid_argument("data.get at " + data_addresses_[i] + " answered no string");
    total += static_cast<std::int64_t>(r->as_string().size());
  }
  return total;
}

Result<std::int64_t> ItineraryTestbed::run_rev(std::uint32_t k) {
  const std::string code = padded(kVisitCode);
  EvalOptions eo;
  eo.isolation = Isolation::trusted;
  const Value args = Value::array({Value(static_cast<std::int64_t>(kRequestBytes))});
  std::int64_t total = 0;
  for (std::uint32_t i = 0; i < k; ++i) {
    auto r = client_->eval(data_addresses_[i], code, args, eo);
    if (!r) return r.error();
    auto n = first_integer(r->results);
    if (!n) return errors::invalid_argument("the evaluation at " + data_addresses_[i] + " returned no number");
    total += *n;
  }
  return total;
}

Result<std::int64_t> ItineraryTestbed::run_ma(std::uint32_t k) {
  return run_tour(std::vector<std::string>(data_addresses_.begin(), data_addresses_.begin() + k));
}

Result<std::int64_t> ItineraryTestbed::run_tour(std::vector<std::string> stops) {
  auto bundle = single_file_bundle("itinerary-agent", padded(kItineraryAgent));
  if (!bundle) return bundle.error();
  AgentLaunch launch;
  launch.bundle = std::move(*bundle);
  launch.owner = "experiment";
  launch.itinerary = std::move(stops);
  launch.state = Value::table();
  launch.state.set("req", static_cast<std::int64_t>(kRequestBytes));
  auto status = launch_and_wait(*client_, client_address_, std::move(launch));
  if (!status) return status.error();
  auto n = first_integer(status->result);
  if (!n) return errors::invalid_argument("the itinerary agent came home with no number");
  return *n;
}

Result<RunResult> ItineraryTestbed::run(Paradigm p, std::uint32_t k, std::uint64_t data_bytes) {
  if (k == 0 || k > nodes_) return errors::invalid_argument("an itinerary of " + std::to_string(k) + " nodes on a testbed of " + std::to_string(nodes_));
  data_bytes_->store(data_bytes);
  const std::uint64_t before = wire_bytes_->load();
  auto t0 = Clock::now();
  Result<std::int64_t> total = errors::invalid_argument("code-on-demand has no itinerary form");
  switch (p) {
    case Paradigm::cs: total = run_cs(k); break;
    case Paradigm::rev: total = run_rev(k); break;
    case Paradigm::ma: total = run_ma(k); break;
    case Paradigm::cod: break;
  }
  const double took = ms_since(t0);
  if (!total) return total.error();
  if (static_cast<std::uint64_t>(*total) != k * data_bytes) {
    return errors::invalid_argument(std::string(paradigm_name(p)) + " over " + std::to_string(k) + " nodes saw " +
                                    std::to_string(*total) + " bytes of data, not " + std::to_string(k * data_bytes));
  }
  return RunResult{took, wire_bytes_->load() - before};
}

}  // namespace sojourn::experiments
