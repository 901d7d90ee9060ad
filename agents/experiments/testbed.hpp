// Internal (experiments): two in-process nodes on loopback joined by an emulated link, a
// client and a data node, and the same task done the four ways of code mobility on them.
// docs/experiments.md, "paradigms".
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "sojourn/agents/advise.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/transports/link_model.hpp"

namespace sojourn::experiments {

// One run of the task: `interactions` requests of `request_bytes` answered by `reply_bytes`;
// the code (rev, cod, ma) is `code_bytes` long.
struct Task {
  std::uint32_t interactions = 1;
  std::uint64_t request_bytes = 200;
  std::uint64_t reply_bytes = 1000;
  std::uint64_t code_bytes = 2000;
};

struct RunResult {
  double measured_ms = 0;
  std::uint64_t wire_bytes = 0;  // frame bytes both nodes wrote on the emulated link
};

class Testbed {
 public:
  // `link` null: no emulation (calibration). Traces go to TRACE_DIR/NAME.jsonl when set.
  Testbed(const LinkSpec* link, std::uint64_t seed, std::string trace_dir);
  ~Testbed();
  Testbed(const Testbed&) = delete;
  Testbed& operator=(const Testbed&) = delete;
  Result<void> start();

  // Each runs the task once, cold for the code (a fresh hash each time), warm for the
  // connections (made before the clock starts).
  Result<RunResult> run(Paradigm p, const Task& task);
  // One weak hop of an agent whose state holds `state_bytes`: launched at the client, it goes
  // to the data node and ends there. downtime_ms: from its `departure` at the client (agent.go)
  // to its `arrival` at the data node, from the nodes' traces (so the testbed needs a trace dir).
  struct MigrationRun {
    double measured_ms = 0, downtime_ms = 0;
    std::uint64_t wire_bytes = 0;
  };
  Result<MigrationRun> run_migration(std::uint64_t state_bytes);
  // Opens every connection a run uses (client -> data, data -> client).
  Result<void> warm_up();
  const std::string& data_address() const { return data_address_; }
  const std::string& client_address() const { return client_address_; }

 private:
  NodeOptions node_options(const std::string& name, const std::string& rule_to) const;
  Result<double> run_cs(const Task& t);
  Result<double> run_rev(const Task& t);
  Result<double> run_cod(const Task& t);
  Result<double> run_ma(const Task& t);
  std::string task_code(const Task& t, const std::string& shape);

  std::optional<LinkSpec> link_;
  std::uint64_t seed_;
  std::string trace_dir_;
  std::shared_ptr<std::atomic<std::uint64_t>> wire_bytes_ = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::shared_ptr<std::atomic<std::uint64_t>> reply_bytes_ = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::unique_ptr<Node> data_, client_;
  std::string data_address_, client_address_;
  std::uint64_t version_ = 0;  // makes each run's code new to the peer
};

}  // namespace sojourn::experiments
