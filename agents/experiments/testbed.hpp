// Internal (experiments): two in-process nodes on loopback joined by an emulated link, a
// client and a data node, and the same task done the four ways of code mobility on them.
// docs/experiments.md, "paradigms".
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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
  // `level`: where both nodes run code from peers; trusted (the default) for the paradigms,
  // process for strong agents (which the trusted level refuses). Above trusted, start() warms
  // up with one strong hop instead of the four paradigms.
  Testbed(const LinkSpec* link, std::uint64_t seed, std::string trace_dir, Isolation level = Isolation::trusted);
  ~Testbed();
  Testbed(const Testbed&) = delete;
  Testbed& operator=(const Testbed&) = delete;
  Result<void> start();

  // Each runs the task once, cold for the code (a fresh hash each time), warm for the
  // connections (made before the clock starts).
  Result<RunResult> run(Paradigm p, const Task& task);
  // One hop of an agent whose state holds `state_bytes`: launched at the client, it goes to
  // the data node and ends there. Weak: the state is a string in its state table; strong (a
  // testbed at the process level): a local string of its heap, carried in its heap image.
  // The phases come from the nodes' traces, as docs/experiments.md, "migration-cost", defines
  // them; without a trace dir (calibration) only measured_ms and wire_bytes are set.
  struct MigrationRun {
    double measured_ms = 0, downtime_ms = 0;
    double address_ms = 0, serialize_ms = 0, transfer_ms = 0, restore_ms = 0, resume_ms = 0;
    std::uint64_t wire_bytes = 0, raw_bytes = 0, compressed_bytes = 0, transfer_bytes = 0;
  };
  Result<MigrationRun> run_migration(std::uint64_t state_bytes, bool strong = false);
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
  Isolation level_;
  std::shared_ptr<std::atomic<std::uint64_t>> wire_bytes_ = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::shared_ptr<std::atomic<std::uint64_t>> reply_bytes_ = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::unique_ptr<Node> data_, client_;
  std::string data_address_, client_address_;
  std::uint64_t version_ = 0;  // makes each run's code new to the peer
};

// The itinerary experiment's testbed: a client and `nodes` data nodes, every pair joined by
// the same emulated link (each node applies it to whatever it sends on loopback). Each data
// node answers `data.get` with `data_bytes`; a run visits the first K of them.
class ItineraryTestbed {
 public:
  ItineraryTestbed(const LinkSpec& link, std::uint32_t nodes, std::uint64_t seed, std::string trace_dir);
  ~ItineraryTestbed();
  ItineraryTestbed(const ItineraryTestbed&) = delete;
  ItineraryTestbed& operator=(const ItineraryTestbed&) = delete;
  // Starts the nodes and opens every connection a run uses (warm connections).
  Result<void> start();
  // cs: K calls from the client, one after another; rev: K remote evaluations, one after
  // another; ma: one agent with the K nodes as its itinerary, home at the end. Each checks that
  // all K * data_bytes were seen. Code new each run (cold), as in Testbed::run.
  Result<RunResult> run(Paradigm p, std::uint32_t k, std::uint64_t data_bytes);
  static constexpr std::uint64_t kRequestBytes = 200;
  static constexpr std::uint64_t kCodeBytes = 2000;

 private:
  Result<std::int64_t> run_cs(std::uint32_t k);
  Result<std::int64_t> run_rev(std::uint32_t k);
  Result<std::int64_t> run_ma(std::uint32_t k);
  Result<std::int64_t> run_tour(std::vector<std::string> stops);  // the itinerary agent over `stops`, home again
  std::string padded(const std::string& body);

  LinkSpec link_;
  std::uint32_t nodes_;
  std::uint64_t seed_;
  std::string trace_dir_;
  std::shared_ptr<std::atomic<std::uint64_t>> wire_bytes_ = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::shared_ptr<std::atomic<std::uint64_t>> data_bytes_ = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::unique_ptr<Node> client_;
  std::vector<std::unique_ptr<Node>> data_;
  std::string client_address_;
  std::vector<std::string> data_addresses_;
  std::uint64_t version_ = 0;
};

}  // namespace sojourn::experiments
