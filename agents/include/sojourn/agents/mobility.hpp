// Types of code-on-demand and mobile agents, as the Node API and the CLI show them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sojourn/core/bundle.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn {

// Where an agent is in its life, as its node (resident) or its home (tracked) knows it.
// Numbers are part of the agent protocol (docs/protocol.md); names are what JSON, the CLI,
// logs and the docs show.
enum class AgentState : std::uint8_t {
  arriving = 0,  // committed here; its home is told before it runs
  queued = 1,    // ready to run, waiting for a worker
  running = 2,   // a step is running (at its home: alive somewhere, not ended)
  asleep = 3,    // called agent.wait and has no message yet: a message wakes it
  moving = 4,    // being handed over to another node
  stranded = 5,  // could not move: stopped where it is, with a reason
  finished = 6,  // its entry returned; the result is at its home
  failed = 7,    // ended with an error (a Lua error, a budget, a refusal), with a reason
};
inline constexpr AgentState kLastAgentState = AgentState::failed;
std::string_view agent_state_name(AgentState state) noexcept;
// invalid_argument "invalid argument: unknown agent state NAME" for any other name.
Result<AgentState> parse_agent_state(std::string_view name);

class SigningKey;

// How an agent moves (docs/migration.md): weak carries its state table and restarts at a
// named entry; strong carries its whole Lua heap (a heap image) and agent.go(peer) returns on
// the destination, at the next line. Numbers are part of the agent protocol.
enum class Mobility : std::uint8_t { weak = 0, strong = 1 };
std::string_view mobility_name(Mobility mobility) noexcept;
// invalid_argument "invalid argument: unknown mobility NAME (weak or strong)" for any other.
Result<Mobility> parse_mobility(std::string_view name);

// A module fetched from a peer (code-on-demand), verified against its hash and cached.
struct FetchedModule {
  std::string hash;
  Bundle bundle;
  std::string origin;       // the peer it came from
  bool from_cache = false;  // true when the peer sent no code (the hash was already here)
};

// What `launch` needs: the agent's code, where it starts, where it goes.
struct AgentLaunch {
  Bundle bundle;
  std::string entry = "start";          // the entry point called at the first node
  Value state;                          // the initial state table (empty table when nil)
  std::vector<std::string> itinerary;   // nodes the agent intends to visit after the first
  std::string owner = "anonymous";
  std::uint32_t max_hops = 0;           // zero: the bundle's, else the node's default; never above the bundle's
  // Signs the bundle (its hash and manifest, quotas included) with the owner's key: every
  // node verifies it, matches its policy on the signer, and never lets the agent's budget
  // rise above the manifest's.
  std::shared_ptr<const SigningKey> signing_key;
  // Strong agents run at the process or microvm level only: a launch whose level would be
  // trusted is refused with the reason (sandbox_refused).
  Mobility mobility = Mobility::weak;
};

// One stop of an agent's tour.
struct AgentHop {
  std::string node;
  std::uint64_t epoch = 0;
  std::int64_t arrived_unix_ms = 0;
  std::int64_t spent_ms = 0;        // running time at that node
  std::uint64_t state_bytes = 0;    // size of the encoded state on arrival
  std::string isolation;            // the jail its steps ran in there
  // Strong agents: "strong" or "weak" (how it arrived there and ran), the heap image it left
  // with (raw arena span and the sealed image as it travels) and the host's time imaging it
  // there and restoring it on arrival.
  std::string mobility = "weak";
  std::uint64_t image_raw_bytes = 0;
  std::uint64_t image_bytes = 0;
  std::uint64_t image_us = 0;
  std::uint64_t restore_us = 0;
};

// What an agent's home node knows of it.
struct AgentStatus {
  std::string id;
  std::string home;
  std::string owner;
  std::string location;   // last node that reported the agent resident
  std::uint64_t epoch = 0;
  AgentState status = AgentState::running;  // running, stranded, finished or failed
  std::string reason;     // why it failed or is stranded
  Value result;           // the entry's return values when finished
  std::vector<AgentHop> hops;
  std::vector<std::string> log;  // lines from agent.log
  std::uint64_t pending_messages = 0;  // sent to it, not yet delivered
  bool done() const { return status == AgentState::finished || status == AgentState::failed; }
};

// An agent's status as a Value table (what agent.status answers and `--json` prints):
// {id, home, owner, location, epoch, status = agent_state_name(...), reason, result,
//  hops = {{node, epoch, arrived_unix_ms, spent_ms, state_bytes, isolation, mobility,
//           image_raw_bytes, image_bytes, image_us, restore_us}...}, log = {...},
//  pending_messages}.
Value to_value(const AgentStatus& status);

// One resident agent, as `sojourn ps` lists it.
struct AgentSummary {
  std::string id;
  std::string owner;
  std::string home;
  std::uint64_t epoch = 0;
  std::int64_t since_unix_ms = 0;
  std::uint64_t state_bytes = 0;
  AgentState status = AgentState::queued;
  std::string reason;  // why it is stranded (empty otherwise)
  std::string isolation;
  std::string mobility = "weak";
  std::uint64_t image_bytes = 0;  // its heap image held here (strong agents), as it travels
};

}  // namespace sojourn
