// The isolation levels a test suite runs over: one tag type per level for doctest's
// TEST_CASE_TEMPLATE, each reaching its jail through one JailSet shared by the executable.
// A suite written as TEST_CASE_TEMPLATE("...", Level, SOJOURN_SUITE_LEVELS) runs at every level
// the executable lists: trusted and process on the host (SOJOURN_SUITE_LEVELS's default), the
// microvm level where an executable defines SOJOURN_SUITE_MICROVM (it runs in the nested VM).
#pragma once

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>

#include "sojourn/sandbox/jail.hpp"

namespace jail_levels {

using sojourn::Isolation;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::AgentInput;
using sojourn::sandbox::AgentOutcome;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::Jail;
using sojourn::sandbox::JailSet;
using sojourn::sandbox::RunInput;

// One set for the whole executable: each level's jail (a zygote, a master VM) starts once.
inline JailSet& jails() {
  static JailSet set{sojourn::sandbox::JailConfig{}};
  return set;
}

// The jail of `level`; a level the executable lists must run here (never skipped quietly).
inline Jail& jail_at(Isolation level) {
  Result<Jail*> jail = jails().get(level);
  REQUIRE_MESSAGE(jail.ok(), (jail.ok() ? "" : jail.error().message));
  REQUIRE((*jail)->level() == level);
  return **jail;
}

// Runs that passed the checks every level makes before it starts anything (non-zero limits,
// no bytecode, no abort): at the process level each must have started a guest.
inline bool reaches_the_jail(const RunInput& input) {
  const sojourn::Limits& l = input.limits;
  return !(l.cpu_instructions == 0 || l.memory_bytes == 0 || l.wall_ms == 0 ||
           (!input.source.empty() && input.source.front() == '\x1b') ||
           (input.abort != nullptr && input.abort->load()));
}

template <Isolation L>
struct Level {
  static constexpr Isolation level = L;
  static inline std::atomic<std::uint64_t> runs{0};  // runs that reached the jail
  static Jail& jail() { return jail_at(L); }
  static Result<Value> run(const RunInput& input, HostCalls* host) {
    if (reaches_the_jail(input)) ++runs;
    return jail().run(input, host);
  }
  static Result<AgentOutcome> run_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) {
    if (reaches_the_jail(input)) ++runs;
    return jail().run_agent(input, agent, host);
  }
};

using Trusted = Level<Isolation::trusted>;
using Process = Level<Isolation::process>;
using Microvm = Level<Isolation::microvm>;

}  // namespace jail_levels

TYPE_TO_STRING(jail_levels::Trusted);
TYPE_TO_STRING(jail_levels::Process);
TYPE_TO_STRING(jail_levels::Microvm);

#ifdef SOJOURN_SUITE_MICROVM
#define SOJOURN_SUITE_LEVELS jail_levels::Microvm
#else
#define SOJOURN_SUITE_LEVELS jail_levels::Trusted, jail_levels::Process
#endif
