// The `trusted` isolation level: a restricted LuaJIT state per run (fresh, or pooled with
// fresh globals), with a capped allocator, an instruction budget that pcall cannot swallow,
// a wall-clock deadline, and the node's services reachable through `node.call`.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "sojourn/core/error.hpp"
#include "sojourn/core/image_codec.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn::sandbox {

// What Lua code may ask of its host. Calls arrive on the thread that runs the chunk.
class HostCalls {
 public:
  virtual ~HostCalls() = default;
  // `node.call(service, ...)`: args is an array table of the Lua arguments.
  virtual Result<Value> call(std::string_view service, const Value& args) = 0;
  // Carried reads (the process jail's warm guests, docs/jails.md): whether `service` is one
  // whose answers this host gives ahead of a run (read-only, its answer a function of its
  // arguments and the store). Asked for each call that crosses, so cheap.
  virtual bool carries(std::string_view /*service*/) const { return false; }
  // The answer `service` gives for `args` now, checked by the policy as a call is, for the
  // run to use without asking; nullopt: not carried (the run asks if it calls).
  virtual std::optional<Value> read_ahead(std::string_view /*service*/, const Value& /*args*/) { return std::nullopt; }
  // The guest says its run used a carried answer: counted as the call it stood for.
  virtual void carried_used(std::string_view /*service*/, const Value& /*args*/) {}
};

struct RunInput {
  std::string_view source;        // Lua source text (bytecode is refused)
  std::string_view chunk_name;    // shown in messages; "eval" when empty
  Value args;                     // array table; its items are the chunk's `...`
  Limits limits;                  // all fields must be non-zero (resolved by the node)
  // Code that came from a peer never runs with the JIT on (compiled loops ignore hooks).
  bool allow_jit = false;
  // Set from another thread to stop the run ("node is shutting down").
  const std::atomic<bool>* abort = nullptr;
  // The jails refuse a result whose frame is larger, before reading it (frame_too_large
  // "frame payload of N bytes exceeds the limit of M bytes"); 0: only the memory limit bounds it.
  std::uint64_t max_result_bytes = 0;
  // Who the code runs for (a signer's or a peer's identity, or "anonymous"): the process
  // jail reuses a warm guest only for runs of the same principal. Empty: unknown, so every
  // run gets a guest of its own that is never reused (docs/jails.md, "Warm guests").
  std::string_view principal;
  // A strong step that stops (agent.go, a checkpoint) seals its heap image with this codec
  // (the node's --image-codec; docs/migration.md, "Image codecs").
  ImageCodec image_codec = ImageCodec::lz4;
};

// Runs one chunk to completion and returns its return values as an array table. A run with a
// principal (no JIT, a memory limit of at least 256 KiB) takes a prepared lua_State of that
// principal from a pool, with its own fresh copy of every global and library table and the
// chunk compiled once per state and text; a state goes back to the pool only after a run that
// ended cleanly, and the registry is reset then. Any other run gets a new lua_State, closed
// after it. Limits and errors are the same either way. Errors (exact messages, tested):
//   lua_error       "Lua error at CHUNK:LINE: MESSAGE" (or "Lua error: MESSAGE" without a position)
//   cpu_limit       "CPU limit of N instructions exceeded"
//   memory_limit    "memory limit of N bytes exceeded"
//   deadline        "wall-clock deadline of N ms exceeded"
//   sandbox_refused "refused by the sandbox: ..." (bytecode, over-complex pattern, a function
//                   in args that must not be rebuilt, ...)
//   not_transferable "value at PATH cannot travel: ..." (a C function, userdata or coroutine
//                   returned; Lua functions travel as text, see docs/values.md)
//   shutting_down   "node is shutting down"
//   internal        "internal error: cannot create a Lua state (...)"
Result<Value> run_lua(const RunInput& input, HostCalls* host);

// One step of a mobile agent (weak mobility). The chunk is the agent's code: it is run,
// then `entry` is called with the agent's state table; the entry is a field of the table
// the chunk returned, or else a global function. Inside, the `agent` table holds the
// facts in `info` (id, home, here, epoch, itinerary, ...) and:
//   agent.state            the state table (the entry's first argument)
//   agent.go(peer, entry)  ends this step; the state travels to `peer`, where `entry` is called
//   agent.wait(entry)      ends this step; the agent stays until a message comes, then `entry`
//   agent.receive()        the next message sent to the agent, or nil (host call "agent.receive")
//   agent.log(...)         a line in the agent's trace (host call "agent.log")
// Host calls named "agent.*" and "code.require" go through HostCalls::call like node.call's.
struct AgentInput {
  std::string_view entry;  // the entry point's name
  Value state;             // a table
  Value info;              // a table of read-only facts, copied into `agent`
};

struct AgentOutcome {
  Value results;  // the entry's return values (array table); empty when the agent went
  Value state;    // the state table after the step, closures included
  bool went = false;      // agent.go was called
  bool waits = false;     // agent.wait was called
  std::string go_peer;    // where agent.go asked to go
  std::string go_entry;   // and what to call there (or when a message comes, for agent.wait)
  // Lua instructions the step ran (to the count hook's granularity): what a travelling
  // CPU budget is charged.
  std::uint64_t instructions = 0;
  // The step's CPU time as the host measured it, where the count above comes from the guest
  // (the process jail: the kernel's account of the guest process); 0 where the host counts
  // the instructions itself (the trusted level) or has no measure.
  std::uint64_t host_cpu_us = 0;
  // Strong steps (docs/migration.md, "Strong mobility"): the agent stopped at agent.go(peer)
  // without an entry (went, go_peer) or at agent.checkpoint(), and its heap was imaged.
  bool strong_stop = false;
  bool checkpoint = false;
};

// Errors are those of run_lua, plus lua_error "Lua error: agent entry point 'NAME' is not a
// function" and not_transferable "value at state.PATH cannot travel: ...".
Result<AgentOutcome> run_agent(const RunInput& input, const AgentInput& agent, HostCalls* host);

}  // namespace sojourn::sandbox
