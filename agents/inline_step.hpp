// Internal: the rule that lets an agent's step be tried on the network thread (agent_runtime.cpp,
// docs/migration.md "The step on the network thread"), a pure function of the step's text so
// that tests check it without a node.
#pragma once

#include <cstddef>
#include <string_view>

namespace sojourn {

// The inline attempt's state bound: converting the state into and out of Lua is not counted
// by the instruction hook, so only small states are tried there (the 4 KB hop, not 1 MB).
inline constexpr std::size_t kInlineStepStateBytes = 16u << 10;
// Bound on the verdicts a runtime keeps (one per bundle hash); past it they are forgotten.
inline constexpr std::size_t kInlineVerdicts = 256;

// True when the bundle's main text, as the lexer reads it (no scoping: a name is checked
// wherever it appears), names as a variable
//   - none of `node`, `require_remote`, `require`, `_G`, `getfenv`, `setfenv`, `getmetatable`,
//     `rawget`, `rawset`, `loadstring`, `load`, `loadfile`, `dofile`, `module`, `package`,
//     `debug`, `coroutine`, `jit`, `ffi`, `io`, `os` (every route to a host service or to a
//     table that holds one), and
//   - `agent` only as `agent.go(...)` or `agent.wait(...)` (recorded; they take effect only
//     when the step ends) or a read of one of its facts (`agent.id`, `agent.home`,
//     `agent.here`, `agent.owner`, `agent.epoch`, `agent.itinerary`, `agent.isolation`),
//     never `agent.receive` nor `agent.log`, never `agent` alone.
// False when the text does not lex. Such a step calls no host service by its text; the
// attempt refuses any host call anyway (AgentRuntime::run_step), so a text that reached one
// by a route this rule missed would be run again on a worker, not twice.
bool inline_step_text(std::string_view text);

}  // namespace sojourn
