// After the suites of this executable ran at every level (doctest orders tests by file, then
// line: this file sorts after them): each level's runs went through that level's own jail.
#include <doctest/doctest.h>

#include "sojourn/sandbox/process_jail.hpp"
#include "tests/support/jail_levels.hpp"

#ifndef SOJOURN_SUITE_MICROVM
TEST_CASE("every run of the suites at the process level went through a guest of the process jail") {
  auto* jail = dynamic_cast<sojourn::sandbox::ProcessJail*>(&jail_levels::Process::jail());
  REQUIRE(jail != nullptr);
  CHECK(jail_levels::Process::runs.load() >= 100);
  CHECK(jail->status().guests_started >= jail_levels::Process::runs.load());
  CHECK(jail->status().zygote_starts == 1);
}
#endif

TEST_CASE("the suites' trusted level runs in this process and every listed level has its own jail") {
  CHECK(jail_levels::Trusted::jail().level() == sojourn::Isolation::trusted);
  CHECK(dynamic_cast<sojourn::sandbox::TrustedJail*>(&jail_levels::Trusted::jail()) != nullptr);
#ifdef SOJOURN_SUITE_MICROVM
  CHECK(jail_levels::Microvm::jail().level() == sojourn::Isolation::microvm);
  CHECK(jail_levels::Microvm::runs.load() >= 100);
#else
  CHECK(&jail_levels::Process::jail() != &jail_levels::Trusted::jail());
#endif
}
