// Tests of bursts in the process jail (ProcessJail::run_burst, docs/jails.md "Bursts"): one
// principal's runs in one warm guest at once, each with its own limits, result or error, in
// order; a run that ends its guest costs the others nothing.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/guest_wire.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::ProcessJail;
using sojourn::sandbox::ProcessJailOptions;
using sojourn::sandbox::RunInput;

constexpr std::uint64_t kMemory = 16u << 20;

std::unique_ptr<ProcessJail> start_jail(bool test_guest) {
  ProcessJailOptions options;
  options.warm_guests = 2;
  if (test_guest) options.guest_path = SOJOURN_TEST_GUEST_PATH;
  auto started = ProcessJail::start(options);
  REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
  return std::move(*started);
}

struct Burst {
  std::vector<std::string> sources;
  std::vector<Limits> limits;
  std::vector<Value> args;
  std::vector<RunInput> inputs;

  void add(std::string source, Limits l = Limits{10'000'000, kMemory, 5000}, Value arguments = Value::table()) {
    sources.push_back(std::move(source));
    limits.push_back(l);
    args.push_back(std::move(arguments));
  }
  std::vector<Result<Value>> run(ProcessJail& jail, std::string_view principal = "signer a", HostCalls* host = nullptr) {
    inputs.assign(sources.size(), RunInput{});
    std::vector<const RunInput*> in;
    std::vector<HostCalls*> hosts(sources.size(), host);
    for (std::size_t i = 0; i < sources.size(); ++i) {
      inputs[i].source = sources[i];
      inputs[i].limits = limits[i];
      inputs[i].args = args[i];
      inputs[i].principal = principal;
      in.push_back(&inputs[i]);
    }
    return jail.run_burst(in, hosts);
  }
};

std::int64_t integer(const Result<Value>& r) {
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return r->get(1).as_integer();
}

void check_error(const Result<Value>& r, Errc code, std::string_view message) {
  REQUIRE(!r.ok());
  CHECK(r.error().code == code);
  CHECK(r.error().message == message);
}

// A store of one counter: `get` reads it (carried, as kv.get is), `bump` adds one and answers
// the new value.
struct Counter final : HostCalls {
  std::int64_t value = 0;
  int calls = 0;
  Result<Value> call(std::string_view service, const Value&) override {
    ++calls;
    if (service == "bump") return Value(++value);
    return Value(value);
  }
  bool carries(std::string_view service) const override { return service == "get"; }
  std::optional<Value> read_ahead(std::string_view service, const Value&) override {
    if (service != "get") return std::nullopt;
    return Value(value);
  }
};

}  // namespace

TEST_CASE("runs of a burst call the host in their turn, and a run after a write never reads a value from before it") {
  auto jail = start_jail(false);
  Counter counter;
  // Learned first: the chunk's get is carried from its second run on.
  Burst warm_up;
  warm_up.add("return node.call('get')");
  for (int round = 0; round < 3; ++round) {
    std::vector<Result<Value>> results = warm_up.run(*jail, "signer a", &counter);
    CHECK(integer(results[0]) == 0);
  }
  Burst burst;
  burst.add("return node.call('get')");
  burst.add("return node.call('bump')");
  burst.add("return node.call('get')");
  burst.add("return node.call('get')");
  burst.add("return node.call('bump')");
  burst.add("return node.call('get')");
  for (int round = 0; round < 3; ++round) {
    std::vector<Result<Value>> results = burst.run(*jail, "signer a", &counter);
    REQUIRE(results.size() == 6);
    const std::int64_t base = 2 * round;
    CHECK(integer(results[0]) == base);
    CHECK(integer(results[1]) == base + 1);
    CHECK(integer(results[2]) == base + 1);  // after the bump: its value, not the one carried
    CHECK(integer(results[3]) == base + 1);
    CHECK(integer(results[4]) == base + 2);
    CHECK(integer(results[5]) == base + 2);
  }
  CHECK(jail->status().bursts >= 3);
  CHECK(jail->status().guests_killed == 0);
}

TEST_CASE("a burst of one principal's runs is answered in one guest, each answer in its place") {
  auto jail = start_jail(false);
  std::vector<Result<Value>> results;
  Burst plain;
  for (int i = 0; i < 6; ++i) plain.add("return " + std::to_string(i * 10));
  results = plain.run(*jail);
  REQUIRE(results.size() == 6);
  for (int i = 0; i < 6; ++i) CHECK(integer(results[i]) == i * 10);
  const auto status = jail->status();
  CHECK(status.bursts == 1);
  CHECK(status.burst_runs == 6);
  CHECK(status.guests_killed == 0);
}

TEST_CASE("a burst of 32 runs goes to one guest in one batch, and a 33rd runs in a turn of its own") {
  // The node's queue hands a worker up to 32 evaluations at a time (a pipelining client's
  // burst, docs/jails.md "Bursts"): all of them go to one warm guest in one batch frame.
  auto jail = start_jail(false);
  Burst burst;
  for (int i = 0; i < 33; ++i) burst.add("return ... + " + std::to_string(i), Limits{10'000'000, kMemory, 5000}, Value::array({Value(std::int64_t{1000})}));
  std::vector<Result<Value>> results = burst.run(*jail);
  REQUIRE(results.size() == 33);
  for (int i = 0; i < 33; ++i) CHECK(integer(results[i]) == 1000 + i);
  const auto status = jail->status();
  CHECK(status.bursts == 1);
  CHECK(status.burst_runs == 32);
  CHECK(status.guests_killed == 0);
}

TEST_CASE("in a burst, a run that raises, one out of memory and one out of instructions get their own errors") {
  auto jail = start_jail(false);
  Burst burst;
  burst.add("return 1");
  burst.add("error('boom', 0)");
  burst.add("local s = 'x' while true do s = s .. s end", {1'000'000'000, kMemory, 5000});
  burst.add("while true do end", {100000, kMemory, 5000});
  burst.add("return 5");
  std::vector<Result<Value>> results = burst.run(*jail);
  REQUIRE(results.size() == 5);
  CHECK(integer(results[0]) == 1);
  check_error(results[1], Errc::lua_error, "Lua error: boom");
  check_error(results[2], Errc::memory_limit, "memory limit of 16777216 bytes exceeded");
  check_error(results[3], Errc::cpu_limit, "CPU limit of 100000 instructions exceeded");
  CHECK(integer(results[4]) == 5);
  const auto status = jail->status();
  CHECK(status.bursts == 1);
  CHECK(status.burst_runs == 5);  // all five answered by the one guest
}

TEST_CASE("a run of a burst killed at its deadline ends with its error; the runs after it are run again elsewhere") {
  auto jail = start_jail(true);
  Burst burst;
  burst.add("return 1");
  burst.add("return 2");
  burst.add("--@spin\nreturn 3", {1000, kMemory, 200});  // a C loop: only the host's kill ends it
  burst.add("return 4");
  burst.add("return 5");
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Result<Value>> results = burst.run(*jail);
  REQUIRE(results.size() == 5);
  CHECK(integer(results[0]) == 1);
  CHECK(integer(results[1]) == 2);
  check_error(results[2], Errc::deadline, "wall-clock deadline of 200 ms exceeded");
  CHECK(integer(results[3]) == 4);
  CHECK(integer(results[4]) == 5);
  // The spin had its own budget (and the kill's grace), not the burst's.
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  const auto status = jail->status();
  CHECK(status.guests_killed >= 1);
  CHECK(status.burst_runs == 3);  // the two answers and the killed run; 4 and 5 ran by themselves
}

TEST_CASE("an answer held back in a burst goes out while a long later run of the same chunk runs") {
  auto jail = start_jail(false);
  // The guest holds a quick run's answer while the next run of the same chunk runs; this one
  // runs far past the first's deadline (100 ms and the kill's grace), so the first keeps its
  // result only if its answer left the guest during the second (the count hook's flush).
  const std::string chunk = "local n = ... local x = 0 for i = 1, n do x = x + i end return n";
  Burst burst;
  burst.add(chunk, {10'000'000, kMemory, 100}, Value::array({Value(std::int64_t{0})}));
  burst.add(chunk, {10'000'000'000, kMemory, 60'000}, Value::array({Value(std::int64_t{300'000'000})}));
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Result<Value>> results = burst.run(*jail);
  const auto took = std::chrono::steady_clock::now() - t0;
  REQUIRE(results.size() == 2);
  CHECK(integer(results[0]) == 0);
  CHECK(integer(results[1]) == 300'000'000);
  CHECK(took > std::chrono::milliseconds(300));  // long enough to have missed the first deadline
  const auto status = jail->status();
  CHECK(status.guests_killed == 0);
  CHECK(status.burst_runs == 2);
}

TEST_CASE("a malformed answer in a burst kills its guest; the others are answered and the jail serves on") {
  auto jail = start_jail(true);
  Burst burst;
  burst.add("return 1");
  burst.add("--@garbage\nreturn 2");
  burst.add("return 3");
  std::vector<Result<Value>> results = burst.run(*jail);
  REQUIRE(results.size() == 3);
  CHECK(integer(results[0]) == 1);
  check_error(results[1], Errc::guest_crashed, "guest crashed: unexpected frame kind 99 (unknown)");
  CHECK(integer(results[2]) == 3);
  Burst after;
  after.add("return 7");
  after.add("return 8");
  results = after.run(*jail);
  CHECK(integer(results[0]) == 7);
  CHECK(integer(results[1]) == 8);
}

TEST_CASE("runs of different principals are never put in one guest together") {
  auto jail = start_jail(false);
  std::vector<Result<Value>> results;
  std::vector<RunInput> inputs(2);
  inputs[0].source = "return 1";
  inputs[1].source = "return 2";
  inputs[0].limits = inputs[1].limits = Limits{10'000'000, kMemory, 5000};
  inputs[0].principal = "signer a";
  inputs[1].principal = "signer b";
  std::vector<const RunInput*> in{&inputs[0], &inputs[1]};
  std::vector<HostCalls*> hosts(2, nullptr);
  results = jail->run_burst(in, hosts);
  CHECK(integer(results[0]) == 1);
  CHECK(integer(results[1]) == 2);
  CHECK(jail->status().bursts == 0);
}

namespace {
struct NoCalls final : sojourn::sandbox::HostCalls {
  sojourn::Result<sojourn::Value> call(std::string_view, const sojourn::Value&) override { return sojourn::Value{}; }
};
}  // namespace

TEST_CASE("a run's frame encoded from its input is the frame of the request made from it") {
  sojourn::sandbox::RunInput input;
  input.source = "return ...";
  input.chunk_name = "job";
  input.limits = Limits{1000, 1 << 20, 50};
  NoCalls calls;
  for (const sojourn::Value& args : {sojourn::Value::array({1, "two"}), sojourn::Value(3)}) {
    input.args = args;  // a table, then not one (sent as an empty table)
    for (sojourn::sandbox::HostCalls* host : {static_cast<sojourn::sandbox::HostCalls*>(nullptr), static_cast<sojourn::sandbox::HostCalls*>(&calls)}) {
      CHECK(sojourn::sandbox::run_request_frame(input, host) ==
            sojourn::sandbox::channel::encode_frame(sojourn::sandbox::make_run_request(input, host)));
    }
  }
}
