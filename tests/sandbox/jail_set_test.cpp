// The JailSet: each level starts on first use and once, a level that cannot start says why
// (in the refusal a node returns), and the strongest level is found without starting the floor.
#include <doctest/doctest.h>

#include <set>
#include <thread>
#include <vector>

#include "sojourn/sandbox/jail.hpp"
#include "tests/support/error_checks.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace {

using sojourn::Errc;
using sojourn::Isolation;
using sojourn::sandbox::Jail;
using sojourn::sandbox::JailConfig;
using sojourn::sandbox::JailSet;

JailConfig without_guest() {
  JailConfig c;
  c.guest_path = "/nonexistent/sojourn-guest";
  c.owner = "jail_set_test";
  return c;
}

}  // namespace

TEST_CASE("a jail set lists every level, weakest first, and has the trusted level at once") {
  CHECK(JailSet::levels() == std::vector<Isolation>{Isolation::trusted, Isolation::process, Isolation::microvm});
  JailSet set(without_guest());
  REQUIRE(set.started(Isolation::trusted) != nullptr);
  CHECK(set.started(Isolation::trusted)->level() == Isolation::trusted);
  CHECK(set.started(Isolation::process) == nullptr);
  CHECK(set.started(Isolation::microvm) == nullptr);
}

TEST_CASE("a level whose jail cannot start is refused with the reason, and the set keeps serving the others") {
  JailSet set(without_guest());
  const std::string why = "process jail unavailable: no guest binary (tried /nonexistent/sojourn-guest)";
  REQUIRE(set.unavailable(Isolation::process) != nullptr);
  CHECK(*set.unavailable(Isolation::process) == why);
  auto refused = set.get(Isolation::process);
  REQUIRE_FALSE(refused.ok());
  CHECK_ERROR(refused, Errc::sandbox_refused, "'process'", why);
  sojourn::sandbox::RunInput input;
  input.source = "return 6 * 7";
  input.limits = {1'000'000, 1u << 20, 1000};
  auto failed = set.run(Isolation::process, input, nullptr);
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().message == refused.error().message);
  auto trusted = set.run(Isolation::trusted, input, nullptr);
  REQUIRE(trusted.ok());
  CHECK(trusted->get(1).as_integer() == 42);

  std::string reasons;
  CHECK(set.available(&reasons) == std::vector<Isolation>{Isolation::trusted});
  CHECK(reasons.rfind("process: " + why + "; microvm: ", 0) == 0);
  CHECK(set.strongest(Isolation::process) == Isolation::process);
  CHECK(set.started(Isolation::process) == nullptr);
}

TEST_CASE("a level's jail starts on first use, once, however many threads ask") {
  JailSet set(JailConfig{});  // the build's guest, through $SOJOURN_GUEST
  CHECK(set.started(Isolation::process) == nullptr);
  std::vector<Jail*> seen(8, nullptr);
  {
    std::vector<std::jthread> askers;
    for (std::size_t i = 0; i < seen.size(); ++i) {
      askers.emplace_back([&, i] {
        auto jail = set.get(Isolation::process);
        if (jail.ok()) seen[i] = *jail;
      });
    }
  }
  CHECK(std::set<Jail*>(seen.begin(), seen.end()).size() == 1);
  REQUIRE(seen[0] != nullptr);
  CHECK(seen[0] == set.started(Isolation::process));
  auto* process = dynamic_cast<sojourn::sandbox::ProcessJail*>(seen[0]);
  REQUIRE(process != nullptr);
  CHECK(process->status().zygote_starts == 1);
  CHECK(process->describe().rfind("guest " + process->status().guest_path + ", zygote ", 0) == 0);
}

TEST_CASE("the strongest level above a floor is the floor when nothing stronger runs here") {
  JailSet set(JailConfig{});
  const Isolation strongest = set.strongest(Isolation::process);
  // microvm where KVM can run the guest (the nested VM), else process, which this call
  // leaves to start when code first runs at it.
  if (set.unavailable(Isolation::microvm) == nullptr) {
    CHECK(strongest == Isolation::microvm);
  } else {
    CHECK(strongest == Isolation::process);
    CHECK(set.started(Isolation::process) == nullptr);
  }
  CHECK(set.strongest(Isolation::microvm) == Isolation::microvm);
}
