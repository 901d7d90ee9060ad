// The cost model of the four paradigms of code mobility, and the advisor built on it: from a
// link's round trip and bandwidth, a task's sizes and the node's measured fixed costs, what
// each paradigm should cost and which to use. docs/experiments.md, "The cost model".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"

namespace sojourn {

enum class Paradigm { cs, rev, cod, ma };
// "cs", "rev", "cod", "ma".
std::string_view paradigm_name(Paradigm p);
// "client-server", "remote evaluation", "code-on-demand", "mobile agent".
std::string_view paradigm_title(Paradigm p);
inline constexpr Paradigm kParadigms[] = {Paradigm::cs, Paradigm::rev, Paradigm::cod, Paradigm::ma};

// A node's own costs, apart from the network: what `sojourn calibrate` measures on loopback
// and stores (calibration_path()). The defaults are round figures of this project's
// development machine, for when no calibration was made.
struct FixedCosts {
  double call_ms = 0.15;        // one request and its reply, client-server, tiny payloads
  double eval_ms = 0.30;        // one remote evaluation of a small chunk
  double fetch_ms = 0.50;       // code-on-demand: fetch a module not yet cached, load and run it
  double hop_ms = 1.00;         // one agent hop (TRANSFER, restore, resume), apart from round trips
  double local_call_ms = 0.01;  // one node.call from Lua to a service of the same node
  double per_kb_ms = 0.005;     // encoding, copying and decoding 1 KB of payload
  double state_per_kb_ms = 0.1; // 1 KB of an agent's state: captured from Lua, encoded, decoded, restored
  std::string source = "built-in defaults";  // "calibrated on HOST at TIME" once measured
};

// The task: `interactions` requests of `request_bytes`, each answered by `reply_bytes`, at the
// node that holds the data, over a link of `rtt_ms` and `bandwidth_bps` (0: unlimited).
struct Workload {
  double rtt_ms = 0;
  std::uint64_t bandwidth_bps = 0;
  std::uint32_t interactions = 1;
  std::uint64_t request_bytes = 0;
  std::uint64_t reply_bytes = 0;
  std::uint64_t code_bytes = 0;     // the code rev sends, cod fetches and an agent carries
  std::uint64_t state_bytes = 256;  // an agent's state, both ways
  std::uint64_t result_bytes = 64;  // what the code sends back when it ran at the data
  // Where the data is. At the peer (the default): client-server, remote evaluation or a mobile
  // agent. Here, with the code at the peer: code-on-demand is a choice too.
  bool data_here = false;
};

struct ParadigmCost {
  Paradigm paradigm = Paradigm::cs;
  double predicted_ms = 0;
  double round_trips = 0;   // of the link, in the prediction
  double bytes = 0;         // payload bytes the prediction charges to the link
};

struct Advice {
  std::vector<ParadigmCost> costs;  // in the order of kParadigms
  Paradigm choice = Paradigm::cs;   // the cheapest that applies (cod only with data_here); cs on a tie
  std::string why;                  // one sentence
};

// The model (docs/experiments.md), with T(b) = 8 b / bandwidth + per_kb_ms b / 1000:
//   cs  = N (RTT + T(req + reply) + call)
//   rev = RTT + T(code + req + result) + eval + N local
//   cod = RTT + T(code) + fetch + N local
//   ma  = 2 RTT + T(code + 3 state + result) + 2 state state_per_kb + 2 hop + N local   (there: TRANSFER, BundleWanted,
//         TRANSFER with the code; back: TRANSFER. The COMMITs and the report home travel while the agent runs)
ParadigmCost predict(Paradigm p, const Workload& w, const FixedCosts& fixed = {});
Advice advise(const Workload& w, const FixedCosts& fixed = {});

// An itinerary (docs/experiments.md, "itinerary"): the same query at each of `nodes` data
// nodes, every pair of nodes (the client included) joined by a link of `rtt_ms` and
// `bandwidth_bps`. Each node answers a request of `request_bytes` with its `data_bytes`;
// code that runs at the data reduces them to `result_bytes`.
struct ItineraryWorkload {
  double rtt_ms = 0;
  std::uint64_t bandwidth_bps = 0;
  std::uint32_t nodes = 1;
  std::uint64_t request_bytes = 200;
  std::uint64_t data_bytes = 1000;
  std::uint64_t code_bytes = 2000;
  std::uint64_t state_bytes = 256;
  std::uint64_t result_bytes = 64;
};

// The itinerary model, with K the nodes and T(b) as above:
//   cs  = K (RTT + T(req + data) + call)                          (K calls, one after another)
//   rev = K (RTT + T(code + req + result) + eval + local)         (K remote evaluations)
//   ma  = (1.5 K + 0.5) RTT + T(K code + (2K+1) state) + (K+1) (state state_per_kb + hop) + K local
// The agent's hop to each data node costs the TRANSFER's one way, the BundleWanted back (its
// code is new there) and the TRANSFER again with the code; the hop home the TRANSFER's one
// way. The COMMITs and the arrival reports travel while the agent runs. (Nodes that have met:
// a first contact between two adds a node.info round trip, once.) Code-on-demand has no
// itinerary form: invalid_argument.
Result<ParadigmCost> predict_itinerary(Paradigm p, const ItineraryWorkload& w, const FixedCosts& fixed = {});

// $SOJOURN_CALIBRATION, else $XDG_DATA_HOME/sojourn/calibration.json, else
// ~/.local/share/sojourn/calibration.json.
std::string calibration_path();
// A JSON object with the FixedCosts fields. Errors: io_error, invalid_json.
Result<FixedCosts> load_calibration(const std::string& path);
Result<void> save_calibration(const std::string& path, const FixedCosts& fixed);

}  // namespace sojourn
