// tests/sandbox/closure_test.cpp run again with every run_lua and run_agent call going through
// the process jail (closures leave and enter guests as text + upvalues, like peers' runs).
#include "in_process_jail.hpp"

#define run_lua run_in_process_jail
#define run_agent run_agent_in_process_jail
#include "../sandbox/closure_test.cpp"
#undef run_agent
#undef run_lua
