// Internal: the migrating record of a mobile agent and its conversion to and from the Value
// tables that the hand-over protocol carries.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sojourn/agents/mobility.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn {

struct AgentRecord {
  std::string id;           // 128 random bits, 32 hex digits
  std::string home;         // the node that tracks it and receives its result
  std::string owner;
  std::string bundle_hash;
  std::string entry;        // called on arrival
  Value state;              // a table (closures included)
  std::uint64_t epoch = 0;  // hops made; grows by one at each hand-over
  std::vector<std::string> itinerary;  // nodes still to visit
  std::uint32_t max_hops = 0;  // its hop budget: never above the manifest's (when it sets one)
  Limits quotas;            // per run; never above the manifest's
  // Lua instructions left for the rest of its life, when the manifest sets a cpu_budget:
  // decremented after each step, never above the manifest's figure.
  std::optional<std::uint64_t> cpu_left;
  // The owner's signature of the bundle (raw Ed25519 key and signature); empty: unsigned.
  std::string signer;
  std::string signature;
  Isolation isolation = Isolation::trusted;
  std::int64_t created_unix_ms = 0;
  std::int64_t updated_unix_ms = 0;
  // The hops its home does not yet hold in full: the current visit's always, and those whose
  // figures no arrival report has had acknowledged yet. The home keeps the whole itinerary
  // (tracking.cpp), so a hand-over costs the same on the 200th hop as on the second.
  std::vector<AgentHop> hops;
  std::uint64_t hops_reported = 0;    // earlier hops the home holds and `hops` no longer does
  std::vector<std::string> visited;   // their nodes, each once (a "known" destination)
  std::vector<std::string> log;      // agent.log lines (the last 64)
  std::vector<Value> mailbox;        // messages not yet received
  std::vector<std::string> delivered;  // ids of messages ever delivered (exactly once)
  // Who launched it, as agent.list/agent.status match a caller (agent_runtime.cpp,
  // viewer_of): "local", "tls:FINGERPRINT" or "" (an unauthenticated peer).
  std::string launcher;
  // The home's secret for the holder of its current epoch: reports to the home (arrival,
  // end, stranding) carry it, and the home's answer to an arrival replaces it (tracking.cpp).
  // Travels only inside TRANSFERs; never shown to the agent, in listings or in status.
  std::string report_token;
  // Strong agents (docs/migration.md, "Strong mobility"). `image` is the heap image its next
  // step resumes from (null: the next step starts `entry` afresh, as after a launch); shared, so
  // copies of the record (a hand-over in flight) do not copy it. It travels beside the record
  // in the TRANSFER, `image_sha256` inside it. `strong_memory` is the memory limit its arena
  // was made for: every later step, here or elsewhere, runs under exactly that limit.
  Mobility mobility = Mobility::weak;
  std::shared_ptr<const std::vector<std::uint8_t>> image;
  std::string image_sha256;
  std::uint64_t strong_memory = 0;
};

std::string new_agent_id();
bool is_agent_id(std::string_view text);
std::int64_t unix_ms_now();

// The record's Value table (its durable row): every field but `image` (which travels beside it).
Value record_to_value(const AgentRecord& r);
Result<AgentRecord> record_from_value(const Value& v);
// The checks a record from a peer passes, whatever carried it (invalid_argument "invalid
// argument: agent record WHY").
Result<void> check_record(const AgentRecord& r);

// Forgets the first `n` hops of the record (their figures reached the home): counts them and
// remembers their nodes in `visited`. The current visit's hop always stays.
void drop_reported_hops(AgentRecord& r, std::size_t n);
// Puts `hops` into a home's itinerary (kept in epoch order) by epoch: a hop of an epoch it
// holds replaces that one (the holder's figures are final), another is inserted. Hops past
// `last_epoch` (which the report could not have finished) are ignored.
void merge_hops(std::vector<AgentHop>& itinerary, const std::vector<AgentHop>& hops, std::uint64_t last_epoch);

Value hops_to_value(const std::vector<AgentHop>& hops);
std::vector<AgentHop> hops_from_value(const Value& v);

// Small helpers for the Value tables of the protocol.
std::string field_string(const Value& table, const char* key);
std::uint64_t field_u64(const Value& table, const char* key);
Value strings_to_value(const std::vector<std::string>& items);
std::vector<std::string> strings_from_value(const Value& v);

}  // namespace sojourn
