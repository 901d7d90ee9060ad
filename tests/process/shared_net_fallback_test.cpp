// Tests of the process jail where the zygote can make no shared network namespace (neither
// privileged nor in a user namespace of its own): each guest then gets a network namespace
// of its own, the jail runs code as before, and its status says which it is. The test guest,
// started under a name ending in "-no-shared-net", refuses the shared one
// (sandbox/guest/test_hooks.cpp); under its own name it behaves as the real guest.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "tests/process/warm_guest_support.hpp"
#include "tests/support/guest_procs.hpp"
#include "tests/support/temp_dir.hpp"

using namespace warm_test;
using sojourn::test::live_children_of;
using sojourn::test::namespace_id;

namespace {

std::unique_ptr<ProcessJail> start_guest_at(const std::string& guest_path) {
  ProcessJailOptions options;
  options.guest_path = guest_path;
  options.warm_guests = 2;
  auto started = ProcessJail::start(options);
  REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
  return std::move(*started);
}

// The network namespaces of this process, of the jail's zygote, and of its guests.
struct NetNamespaces {
  std::uint64_t self = 0;
  std::uint64_t zygote = 0;
  std::vector<std::uint64_t> guests;  // 0 for one this process may not look into
};

// Two idle warm guests of one principal (alive, and no other of this jail's guests alive),
// and the network namespaces of everyone involved.
NetNamespaces net_namespaces(ProcessJail& jail) {
  CHECK(first_integer(run(jail, "signer a", "return 1 + 1")) == 2);
  REQUIRE(wait_for_warm(jail, 2));
  const pid_t zygote = jail.status().zygote_pid;
  // The same guests in two looks 50 ms apart: none of them is still being reaped.
  std::vector<pid_t> guests;
  std::vector<pid_t> before;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < give_up) {
    guests = live_children_of(zygote);
    if (guests.size() >= 2 && guests == before) break;
    before = guests;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  NetNamespaces out;
  out.self = namespace_id(::getpid(), "net");
  out.zygote = namespace_id(zygote, "net");
  for (pid_t guest : guests) out.guests.push_back(namespace_id(guest, "net"));
  return out;
}

// A guest is not dumpable: only CAP_SYS_PTRACE in the node's user namespace may read its
// /proc/PID/ns (root in CI, where these tests run in full).
bool guests_unreadable(const NetNamespaces& seen) {
  if (seen.guests.empty() || seen.guests.front() != 0 || ::geteuid() == 0) return false;
  MESSAGE("not root: a guest's /proc/PID/ns cannot be read, only the zygote's was checked");
  return true;
}

}  // namespace

TEST_CASE("without a shared network namespace each guest gets one of its own, the jail runs code, and its status says so") {
  sojourn::test::TempDir dir;
  const std::string renamed = dir / "sojourn-guest-test-no-shared-net";
  std::filesystem::create_symlink(SOJOURN_TEST_GUEST_PATH, renamed);
  auto jail = start_guest_at(renamed);
  const auto status = jail->status();
  MESSAGE("namespaces: '" << status.namespaces << "' fallback: '" << status.namespace_fallback << "'");
  // Every namespace still, the network one cloned per guest: not marked shared.
  CHECK(status.namespaces == "user net mount pid ipc");
  CHECK(jail->describe().find(", namespaces: user net mount pid ipc") != std::string::npos);
  // Runs and agent steps go on as with a shared one.
  CHECK(first_integer(run(*jail, "", "return 20 + 22")) == 42);
  RunInput input;
  input.source = "function start(state) state.n = (state.n or 0) + 1 return state.n end";
  input.limits = limits();
  Value state = Value::table();
  state.set("n", 6);
  Result<sojourn::sandbox::AgentOutcome> step = jail->run_agent(input, {"start", state, Value::table()}, nullptr);
  REQUIRE_MESSAGE(step.ok(), (step.ok() ? "" : step.error().message));
  CHECK(step->results.get(1).as_integer() == 7);
  const NetNamespaces seen = net_namespaces(*jail);
  // The zygote made none: it is still in the node's.
  REQUIRE(seen.self != 0);
  CHECK(seen.zygote == seen.self);
  REQUIRE(seen.guests.size() >= 2);
  if (guests_unreadable(seen)) return;
  for (std::size_t i = 0; i < seen.guests.size(); ++i) {
    CAPTURE(i);
    REQUIRE(seen.guests[i] != 0);
    CHECK(seen.guests[i] != seen.self);
    for (std::size_t j = 0; j < i; ++j) CHECK(seen.guests[i] != seen.guests[j]);
  }
}

TEST_CASE("the test guest under its own name gives its guests one shared network namespace, as the real guest does") {
  // The other side of the test above: the same checks tell a shared namespace from one each.
  auto jail = start_guest_at(SOJOURN_TEST_GUEST_PATH);
  const auto status = jail->status();
  REQUIRE(status.namespace_fallback.empty());  // this machine allows every namespace
  CHECK(status.namespaces == "user net(shared) mount pid ipc");
  const NetNamespaces seen = net_namespaces(*jail);
  REQUIRE(seen.zygote != 0);
  CHECK(seen.zygote != seen.self);
  REQUIRE(seen.guests.size() >= 2);
  if (guests_unreadable(seen)) return;
  for (std::uint64_t guest : seen.guests) CHECK(guest == seen.zygote);
}
