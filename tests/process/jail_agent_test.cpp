// The agent-step suite of the trusted level (tests/sandbox/agent_run_test.cpp), run again
// with every run_agent call going through ProcessJail::run_agent: agent.go, agent.wait,
// agent.* host calls and require_remote cross the guest's channel unchanged.
#include "in_process_jail.hpp"

#define run_agent run_agent_in_process_jail
#include "../sandbox/agent_run_test.cpp"
#undef run_agent
