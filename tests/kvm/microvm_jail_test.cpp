// The microvm isolation level end to end: sandbox::MicrovmJail runs chunks and agent steps in
// copy-on-write forks of one master VM, and contains every way a guest can end badly (the
// test guest's hooks misbehave on purpose). Needs /dev/kvm: it runs in kvm_tests (nested QEMU
// where the host has no usable KVM).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/sandbox/microvm_jail.hpp"
#include "sojourn/sandbox/process_jail.hpp"
#include "tests/support/error_checks.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::MicrovmJail;
using sojourn::sandbox::MicrovmJailOptions;
using sojourn::sandbox::RunInput;

MicrovmJail& jail_with(const std::string& guest) {
  static std::map<std::string, std::unique_ptr<MicrovmJail>> jails;
  auto& slot = jails[guest];
  if (!slot) {
    MicrovmJailOptions o;
    o.guest_path = guest;
    o.memory_bytes = 512u << 20;
    auto started = MicrovmJail::start(o);
    REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
    slot = std::move(*started);
    MESSAGE(guest << ": master booted in " << slot->status().master_boot_ms << " ms");
  }
  return *slot;
}

MicrovmJail& jail() { return jail_with(SOJOURN_GUEST_PATH); }
MicrovmJail& test_jail() { return jail_with(SOJOURN_TEST_GUEST_PATH); }

class CountingHost : public HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    ++calls;
    if (service == "echo") return args;
    return sojourn::make_error(Errc::no_such_service, "no such service: " + std::string(service));
  }
  std::atomic<int> calls{0};
};

Result<Value> run(MicrovmJail& j, std::string_view source, Limits limits = {10'000'000, 16u << 20, 5000},
                  bool jit = false, HostCalls* host = nullptr) {
  RunInput input;
  input.source = source;
  input.chunk_name = "=microvm";
  input.limits = limits;
  input.allow_jit = jit;
  return j.run(input, host);
}

void still_serves(MicrovmJail& j) {
  auto next = run(j, "return 1 + 1");
  REQUIRE_MESSAGE(next.ok(), (next.ok() ? "" : next.error().message));
  CHECK(next->get(1).as_integer() == 2);
}

}  // namespace

TEST_CASE("a chunk runs in a microVM and returns its values; host calls cross the channel") {
  CountingHost host;
  auto r = run(jail(), "local t = node.call('echo', 'a', 2) return t[1], t[2] * 21, #tostring({})",
               {10'000'000, 16u << 20, 5000}, false, &host);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->get(1).as_string() == "a");
  CHECK(r->get(2).as_integer() == 42);
  CHECK(host.calls == 1);

  // The cost of a host call from a microVM (a channel round trip through the monitor).
  const auto t0 = std::chrono::steady_clock::now();
  auto many = run(jail(), "for i = 1, 200 do node.call('echo', i) end return 1", {10'000'000, 16u << 20, 30'000},
                  false, &host);
  const auto us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(many.ok());
  CHECK(host.calls == 201);
  MESSAGE("200 host calls in one microVM run: " << us / 1000 << " ms (" << us / 200 << " us per call, run included)");
}

TEST_CASE("each run gets a pristine fork: what one run wrote is not seen by the next") {
  for (int i = 0; i < 3; ++i) {
    auto r = run(jail(), "counter = (counter or 0) + 1; string.leaked = true; return counter");
    REQUIRE(r.ok());
    CHECK(r->get(1).as_integer() == 1);
  }
  auto probe = run(jail(), "return string.leaked == nil");
  REQUIRE(probe.ok());
  CHECK(probe->get(1).as_bool());
}

TEST_CASE("Lua errors and limits come back exactly as at the trusted level") {
  struct Case {
    const char* source;
    Limits limits;
    Errc code;
  };
  for (const Case& c : {Case{"error('boom')", {10'000'000, 16u << 20, 5000}, Errc::lua_error},
                        Case{"while true do end", {100'000, 16u << 20, 5000}, Errc::cpu_limit},
                        Case{"local t = {} for i = 1, 1e8 do t[i] = {} end", {1'000'000'000, 8u << 20, 5000},
                             Errc::memory_limit}}) {
    INFO(c.source);
    auto in_vm = run(jail(), c.source, c.limits);
    RunInput input;
    input.source = c.source;
    input.chunk_name = "=microvm";
    input.limits = c.limits;
    auto trusted = sojourn::sandbox::run_lua(input, nullptr);
    REQUIRE_FALSE(in_vm.ok());
    REQUIRE_FALSE(trusted.ok());
    CHECK(in_vm.error().code == c.code);
    CHECK(in_vm.error().code == trusted.error().code);
    CHECK(in_vm.error().message == trusted.error().message);
  }
  still_serves(jail());
}

TEST_CASE("a JIT-compiled loop, which no Lua hook sees, is forced out at its deadline") {
  auto r = run(jail(), "local i = 0 while true do i = i + 1 end", {1'000'000'000'000, 16u << 20, 300}, true);
  REQUIRE_FALSE(r.ok());
  CHECK_ERROR(r, Errc::deadline, "300 ms");
  // The JIT really ran: compiled code needs executable guest pages, which it got.
  auto traces = run(jail(), "local s = 0 for i = 1, 200000 do s = s + i % 7 end return s",
                    {10'000'000'000, 16u << 20, 5000}, true);
  REQUIRE_MESSAGE(traces.ok(), (traces.ok() ? "" : traces.error().message));
  CHECK(traces->get(1).as_integer() == 599997);
  still_serves(jail());
}

TEST_CASE("an agent step runs in a microVM: state in, state out, agent.go reported") {
  RunInput input;
  input.source = "local M = {} function M.step(s) s.n = s.n + 1; agent.go('elsewhere', 'step') end return M";
  input.chunk_name = "=agent";
  input.limits = {10'000'000, 16u << 20, 5000};
  Value state = Value::table();
  state.set("n", 41);
  sojourn::sandbox::AgentInput agent{"step", state, Value::table()};
  auto out = jail().run_agent(input, agent, nullptr);
  REQUIRE_MESSAGE(out.ok(), (out.ok() ? "" : out.error().message));
  CHECK(out->went);
  CHECK(out->go_peer == "elsewhere");
  CHECK(out->state.get("n").as_integer() == 42);
}

TEST_CASE("an agent step in a microVM reports the CPU its vCPU thread used, as the host measured it") {
  // The guest's own instruction count is its word; the vCPU thread's CPU time is the kernel's.
  RunInput input;
  input.source = "local M = {} function M.step(s) local x = 0 for i = 1, 3e6 do x = x + i end s.x = x end return M";
  input.chunk_name = "=agent";
  input.limits = {1'000'000'000, 16u << 20, 20'000};
  sojourn::sandbox::AgentInput agent{"step", Value::table(), Value::table()};
  auto out = jail().run_agent(input, agent, nullptr);
  REQUIRE_MESSAGE(out.ok(), (out.ok() ? "" : out.error().message));
  // Three million loop iterations take well over a millisecond of CPU, emulated or not.
  CHECK(out->host_cpu_us > 1000);
}

TEST_CASE("concurrent runs each get their own microVM") {
  std::vector<std::thread> threads;
  std::atomic<int> right{0};
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([t, &right] {
      for (int i = 0; i < 3; ++i) {
        const std::string source = "x = " + std::to_string(t * 10 + i) + " return x * 2";
        auto r = run(jail(), source);
        if (r.ok() && r->get(1).as_integer() == 2 * (t * 10 + i)) ++right;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(right == 9);
}

TEST_CASE("a memory limit larger than a microVM is refused before any VM runs") {
  const auto before = jail().status().runs;
  auto r = run(jail(), "return 1", {10'000, 1u << 30, 1000});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::invalid_argument);
  CHECK(r.error().message.find("does not fit in a microVM") != std::string::npos);
  CHECK(jail().status().runs == before);
}

TEST_CASE("a guest that misbehaves is contained with a precise error, and the jail goes on") {
  MicrovmJail& j = test_jail();
  SUBCASE("an unknown syscall fails in the guest (-ENOSYS) and the run goes on") {
    for (const char* call : {"socket", "openat", "execve", "ptrace"}) {
      auto r = run(j, std::string("--@syscall ") + call + "\nreturn 7");
      REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
      CHECK(r->get(1).as_integer() == 7);
    }
  }
  SUBCASE("a store to an unmapped address ends the microVM") {
    auto r = run(j, "--@segv\nreturn 1");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::vm_guest_fault);
    MESSAGE(r.error().message);
  }
  SUBCASE("a C loop no Lua hook sees is forced out at the deadline") {
    auto r = run(j, "--@spin\nreturn 1", {10'000'000, 16u << 20, 300});
    REQUIRE_FALSE(r.ok());
    CHECK_ERROR(r, Errc::deadline, "300 ms");
  }
  SUBCASE("a frame of a kind the host never expects") {
    auto r = run(j, "--@garbage\nreturn 1");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::guest_crashed);
    CHECK(r.error().message.find("unexpected frame kind") != std::string::npos);
  }
  SUBCASE("an answer announced larger than the memory limit") {
    auto r = run(j, "--@huge\nreturn 1");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::memory_limit);
  }
  SUBCASE("a guest the host gave up on is forced out at once, not at its 20 s budget") {
    const Limits patient{1'000'000'000'000, 16u << 20, 20'000};
    const auto t0 = std::chrono::steady_clock::now();
    auto answered = run(j, "--@spin-after-answer\nreturn 2", patient);
    REQUIRE_MESSAGE(answered.ok(), (answered.ok() ? "" : answered.error().message));
    CHECK(answered->get(1).as_integer() == 1);  // the hook's answer, sent before it spins
    auto garbled = run(j, "--@garbage\nlocal i = 0 while true do i = i + 1 end", patient, true);
    REQUIRE_FALSE(garbled.ok());
    CHECK(garbled.error().code == Errc::guest_crashed);
    const auto took = std::chrono::steady_clock::now() - t0;
    MESSAGE("both runs took " << std::chrono::duration<double, std::milli>(took).count() << " ms");
    CHECK(took < std::chrono::seconds(10));
  }
  SUBCASE("an exit without an answer") {
    auto r = run(j, "--@exit3\nreturn 1");
    REQUIRE_FALSE(r.ok());
    CHECK_ERROR(r, Errc::guest_crashed, "status 3");
  }
  still_serves(j);
}

TEST_CASE("a strong agent moves from a microVM to a process guest and back, at the next line each time") {
  using sojourn::sandbox::AgentInput;
  auto process = sojourn::sandbox::ProcessJail::start({SOJOURN_GUEST_PATH});
  REQUIRE_MESSAGE(process.ok(), (process.ok() ? "" : process.error().message));
  RunInput input;
  input.source = R"(
    function start()
      local gen = coroutine.wrap(function() for i = 1, 10 do coroutine.yield(i) end end)
      local seen = {}
      for _, stop in ipairs({'process', 'microvm'}) do
        local n = gen()
        agent.go(stop)
        seen[#seen + 1] = agent.here .. n
      end
      return table.concat(seen, ' ')
    end)";
  input.chunk_name = "=strong";
  input.args = Value::table();
  input.limits = Limits{50'000'000, 16u << 20, 20'000};
  auto at = [](const char* here) {
    Value info = Value::table();
    info.set(Value("here"), Value(here));
    return info;
  };
  const AgentInput agent{"start", Value::table(), at("microvm")};
  auto first = jail().run_strong(input, agent, nullptr);
  REQUIRE_MESSAGE(first.ok(), (first.ok() ? "" : first.error().message));
  REQUIRE(first->step.strong_stop);
  CHECK(first->step.go_peer == "process");
  auto second = (*process)->resume_strong(first->image, input, at("process"), nullptr);
  REQUIRE_MESSAGE(second.ok(), (second.ok() ? "" : second.error().message));
  REQUIRE(second->step.strong_stop);
  CHECK(second->step.go_peer == "microvm");
  auto third = jail().resume_strong(second->image, input, at("microvm"), nullptr);
  REQUIRE_MESSAGE(third.ok(), (third.ok() ? "" : third.error().message));
  CHECK(!third->step.strong_stop);
  CHECK(third->step.results.get(Value(std::int64_t{1})).as_string() == "process1 microvm2");
}
