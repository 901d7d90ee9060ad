// Tests of the process jail's warm guests: a principal's runs reuse its guests, nothing a
// run leaves behind reaches the next, principals never share a guest, a guest killed by a
// limit is never reused, and the pool refills in the background.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "sojourn/sandbox/process_jail.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::ProcessJail;
using sojourn::sandbox::ProcessJailOptions;
using sojourn::sandbox::RunInput;

constexpr std::uint64_t kMemory = 16u << 20;

Limits limits(std::uint32_t wall_ms = 5000) { return Limits{10'000'000, kMemory, wall_ms}; }

std::unique_ptr<ProcessJail> start(std::uint32_t warm_guests, bool test_guest = false) {
  ProcessJailOptions options;
  options.warm_guests = warm_guests;
  if (test_guest) options.guest_path = SOJOURN_TEST_GUEST_PATH;
  auto started = ProcessJail::start(options);
  REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
  return std::move(*started);
}

Result<Value> run(ProcessJail& jail, std::string_view principal, std::string_view source, Limits l = limits()) {
  RunInput input;
  input.source = source;
  input.limits = l;
  input.principal = principal;
  return jail.run(input, nullptr);
}

std::int64_t first_integer(const Result<Value>& r) {
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return r->get(1).as_integer();
}

// Waits (up to 10 s) until the jail has `n` idle warm guests.
bool wait_for_warm(const ProcessJail& jail, std::uint64_t n) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (jail.status().guests_warm < n) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// run_if_warm until a warm guest served it (up to 10 s): one just forked is passed over
// while it still sets its own limits.
std::optional<Result<Value>> run_when_warm(ProcessJail& jail, const RunInput& input) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    std::optional<Result<Value>> r = jail.run_if_warm(input, nullptr, 20);
    if (r || std::chrono::steady_clock::now() > until) return r;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace

TEST_CASE("a principal's later runs are served by a warm guest, without a fork on their path") {
  auto jail = start(2);
  CHECK(first_integer(run(*jail, "signer a", "return 1")) == 1);
  REQUIRE(wait_for_warm(*jail, 2));
  const auto started = jail->status().guests_started;
  for (int i = 0; i < 5; ++i) CHECK(first_integer(run(*jail, "signer a", "return 2 + " + std::to_string(i))) == 2 + i);
  const auto status = jail->status();
  CHECK(status.guests_reused == 5);
  CHECK(status.guests_started == started);  // every one of the five ran in a guest forked before it
}

TEST_CASE("a global set in one run is absent in the next run of the same principal") {
  auto jail = start(1);
  CHECK(first_integer(run(*jail, "signer a", "leaked = 42 string.leaked = 7 return 1")) == 1);
  Result<Value> second = run(*jail, "signer a", "return leaked == nil and string.leaked == nil, collectgarbage('count')");
  REQUIRE(second.ok());
  CHECK(jail->status().guests_reused == 1);  // the second run did run in the first one's guest
  CHECK(second->get(1).as_bool());
}

TEST_CASE("a warm guest never serves another principal, and code of no known principal never reuses one") {
  auto jail = start(2);
  CHECK(first_integer(run(*jail, "signer a", "return 1")) == 1);
  REQUIRE(wait_for_warm(*jail, 2));
  CHECK(first_integer(run(*jail, "signer b", "return 1")) == 1);
  CHECK(first_integer(run(*jail, "anonymous", "return 1")) == 1);
  CHECK(first_integer(run(*jail, "", "return 1")) == 1);
  CHECK(first_integer(run(*jail, "", "return 1")) == 1);
  CHECK(jail->status().guests_reused == 0);  // a's idle guests were there, and none was taken
  CHECK(first_integer(run(*jail, "signer b", "return 1")) == 1);
  CHECK(jail->status().guests_reused == 1);
}

TEST_CASE("a guest killed by a limit is not reused, and the pool refills in its place") {
  auto jail = start(1, /*test_guest=*/true);
  CHECK(first_integer(run(*jail, "signer a", "return 1")) == 1);
  REQUIRE(wait_for_warm(*jail, 1));
  const auto started = jail->status().guests_started;
  // A C loop no Lua hook sees: the host kills the warm guest at the deadline.
  Result<Value> spin = run(*jail, "signer a", "--@spin\nreturn 1", limits(100));
  REQUIRE_FALSE(spin.ok());
  CHECK(spin.error().code == Errc::deadline);
  CHECK(jail->status().guests_killed == 1);
  CHECK(jail->status().guests_reused == 1);
  REQUIRE(wait_for_warm(*jail, 1));
  CHECK(jail->status().guests_started == started + 1);  // a new guest, forked off the request path
  CHECK(jail->status().guests_refilled >= 1);
  CHECK(first_integer(run(*jail, "signer a", "return 3")) == 3);
  CHECK(jail->status().guests_reused == 2);
}

TEST_CASE("a guest that keeps running after its answer is not reused") {
  auto jail = start(1, /*test_guest=*/true);
  CHECK(first_integer(run(*jail, "signer a", "--@spin-after-answer\nreturn 1")) == 1);
  // By now it spent more CPU since its answer than a reset takes. Its principal's next run
  // must not wait for a guest that never went back to waiting.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto begin = std::chrono::steady_clock::now();
  CHECK(first_integer(run(*jail, "signer a", "return 2", limits(2000))) == 2);
  CHECK(std::chrono::steady_clock::now() - begin < std::chrono::milliseconds(1500));
}

TEST_CASE("a warm guest's CPU-time rlimit counts from each run, not from its first") {
  auto jail = start(1);
  // Each run burns well under its budget; together they would pass a limit set once.
  const std::string burn = "local x = 0 for i = 1, 3e6 do x = x + i end return 1";
  RunInput input;
  for (int i = 0; i < 4; ++i) {
    Result<Value> r = run(*jail, "signer a", burn, Limits{100'000'000, kMemory, 1000});
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  }
  CHECK(jail->status().guests_reused >= 3);
}

TEST_CASE("a guest whose run left it large is not kept warm") {
  auto jail = start(1);
  const Limits big{100'000'000, 128u << 20, 5000};
  // About 48 MB of live strings at the answer: the arena's pages would stay resident.
  Result<Value> grew = run(*jail, "signer a", "local t = {} for i = 1, 48 do t[i] = string.rep('x', 1048576 - 64) .. i end return #t", big);
  REQUIRE_MESSAGE(grew.ok(), (grew.ok() ? "" : grew.error().message));
  // Its guest was discarded, so the pool forked another in its place (a kept one would have
  // been the key's one guest, and nothing would have been refilled).
  REQUIRE(wait_for_warm(*jail, 1));
  CHECK(jail->status().guests_refilled == 1);
  CHECK(jail->status().guests_started == 2);
  // A small run's guest is kept.
  CHECK(first_integer(run(*jail, "signer a", "return 1", big)) == 1);
  CHECK(first_integer(run(*jail, "signer a", "return 1", big)) == 1);
  CHECK(jail->status().guests_reused == 2);
  CHECK(jail->status().guests_started == 2);
}

TEST_CASE("run_if_warm serves only an idle warm guest of the run's own principal and never forks") {
  auto jail = start(1, /*test_guest=*/true);
  RunInput input;
  input.source = "return 5";
  input.limits = limits();
  input.principal = "signer a";
  // Nothing idle yet: no answer, and no guest forked on this path (a refill is asked for).
  CHECK_FALSE(jail->run_if_warm(input, nullptr, 20).has_value());
  CHECK(jail->status().guests_reused == 0);
  REQUIRE(wait_for_warm(*jail, 1));
  input.principal = "signer b";
  CHECK_FALSE(jail->run_if_warm(input, nullptr, 20).has_value());  // a's guest is not b's
  CHECK(jail->status().guests_reused == 0);
  input.principal = "";
  CHECK_FALSE(jail->run_if_warm(input, nullptr, 20).has_value());  // nobody's guest is reused
  input.principal = "signer a";
  std::optional<Result<Value>> five = run_when_warm(*jail, input);
  REQUIRE(five.has_value());
  CHECK(first_integer(*five) == 5);
  CHECK(jail->status().guests_reused == 1);
  // A C loop no Lua hook sees: killed at its deadline plus the short grace, never reused.
  REQUIRE(wait_for_warm(*jail, 1));
  input.source = "--@spin\nreturn 1";
  input.limits = limits(50);
  std::optional<Result<Value>> spin = run_when_warm(*jail, input);
  REQUIRE(spin.has_value());
  REQUIRE_FALSE(spin->ok());
  CHECK(spin->error().code == Errc::deadline);
  CHECK(jail->status().guests_killed == 1);
  REQUIRE(wait_for_warm(*jail, 2));  // a's refilled guest and b's
  input.source = "return 6";
  input.limits = limits();
  std::optional<Result<Value>> six = run_when_warm(*jail, input);
  REQUIRE(six.has_value());
  CHECK(first_integer(*six) == 6);
}
