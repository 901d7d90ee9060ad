// Internal: the copy of an agent's record that one step reads (agent_runtime.cpp, run_step).
#pragma once

#include "agents/agent_record.hpp"

namespace sojourn {

// The record as one step reads it: every field but those the node alone keeps, which grow
// with the agent's life (its hop trail, mailbox, log, delivered ids and visited nodes): a
// step does not copy them. `r` is the same record after the call, whatever happens.
AgentRecord copy_for_step(AgentRecord& r);

}  // namespace sojourn
