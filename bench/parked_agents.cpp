// bench_parked_agents: memory of many parked agents on one node (issue 15's memory goal:
// 10,000 agents asleep in agent.wait in under 100 MiB). One node in this process, at the
// trusted level (no guest process per agent: what a parked agent costs is its record, its
// state and its code). Prints the process's resident set before the agents, with all of them
// parked, and after a message woke each and it finished, and the bytes per parked agent.
//
//   bench_parked_agents [--agents N] [--state-bytes B]
#include <malloc.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/core/log.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// VmRSS of this process in bytes (0 when /proc cannot say).
std::uint64_t rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

double mib(std::uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr const char* kParker = R"(
local M = {}
function M.start(s)
  agent.wait("wake")
end
function M.wake(s)
  local m = agent.receive()
  return m, #s.pad
end
return M)";

// How many agents resident at the node are in `state`.
std::size_t count_in(sojourn::Node& node, sojourn::AgentState state) {
  auto list = node.list_agents();
  if (!list) return 0;
  std::size_t n = 0;
  for (const auto& a : *list) n += a.status == state ? 1 : 0;
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sojourn;
  std::size_t agents = 10'000;
  std::size_t state_bytes = 64;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--agents") == 0 && i + 1 < argc) {
      agents = std::strtoull(argv[++i], nullptr, 10);
    } else if (std::strcmp(argv[i], "--state-bytes") == 0 && i + 1 < argc) {
      state_bytes = std::strtoull(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: bench_parked_agents [--agents N] [--state-bytes B]\n");
      return 2;
    }
  }
  if (agents == 0) {
    std::fprintf(stderr, "--agents must be at least 1\n");
    return 2;
  }
  set_log_level(LogLevel::error);

  NodeOptions o;
  o.name = "parked";
  o.peer_isolation = Isolation::trusted;
  Node node(o);
  auto bound = node.listen("127.0.0.1:0");
  if (!bound) {
    std::fprintf(stderr, "listen: %s\n", bound.error().message.c_str());
    return 1;
  }
  auto bundle = single_file_bundle("parker", kParker);
  if (!bundle) {
    std::fprintf(stderr, "bundle: %s\n", bundle.error().message.c_str());
    return 1;
  }
  malloc_trim(0);
  const std::uint64_t before = rss_bytes();

  const auto launch_started = Clock::now();
  std::vector<std::string> ids;
  ids.reserve(agents);
  for (std::size_t i = 0; i < agents; ++i) {
    AgentLaunch l;
    l.bundle = *bundle;
    l.state = Value::table();
    l.state.set("pad", std::string(state_bytes, 'x'));
    auto id = node.launch("", std::move(l));
    if (!id) {
      std::fprintf(stderr, "launch %zu: %s\n", i, id.error().message.c_str());
      return 1;
    }
    ids.push_back(std::move(*id));
  }
  // Every agent has run its first step and is parked.
  const auto deadline = Clock::now() + std::chrono::minutes(5);
  while (count_in(node, AgentState::asleep) < agents) {
    if (Clock::now() > deadline) {
      std::fprintf(stderr, "the agents did not all park within 5 minutes\n");
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const double launch_s = seconds_since(launch_started);
  const std::uint64_t parked = rss_bytes();

  const auto wake_started = Clock::now();
  for (std::size_t i = 0; i < agents; ++i) {
    auto sent = node.send_to_agent("", ids[i], Value(static_cast<std::int64_t>(i)));
    if (!sent) {
      std::fprintf(stderr, "send %zu: %s\n", i, sent.error().message.c_str());
      return 1;
    }
  }
  std::size_t finished = 0;
  for (std::size_t i = 0; i < agents; ++i) {
    auto s = node.wait_agent("", ids[i], std::chrono::minutes(5));
    if (!s || s->status != AgentState::finished || s->result.get(1).as_integer() != static_cast<std::int64_t>(i)) {
      std::fprintf(stderr, "agent %zu did not finish with its message: %s\n", i,
                   s ? s->reason.c_str() : s.error().message.c_str());
      return 1;
    }
    ++finished;
  }
  const double wake_s = seconds_since(wake_started);
  const std::uint64_t after = rss_bytes();
  malloc_trim(0);
  const std::uint64_t trimmed = rss_bytes();

  const double per_agent = parked > before ? static_cast<double>(parked - before) / static_cast<double>(agents) : 0.0;
  std::printf("parked agents on one node (trusted level, %zu bytes of state each)\n", state_bytes);
  std::printf("%-34s %12s\n", "measure", "value");
  std::printf("%-34s %12zu\n", "agents parked", agents);
  std::printf("%-34s %9.1f MiB\n", "RSS before", mib(before));
  std::printf("%-34s %9.1f MiB\n", "RSS with all parked", mib(parked));
  std::printf("%-34s %9.1f MiB\n", "RSS after all finished", mib(after));
  std::printf("%-34s %9.1f MiB\n", "RSS after finished, malloc_trim", mib(trimmed));
  std::printf("%-34s %12.0f\n", "bytes per parked agent", per_agent);
  std::printf("%-34s %12.2f\n", "launch + park, s", launch_s);
  std::printf("%-34s %12.2f\n", "wake + finish, s", wake_s);
  std::printf("%-34s %12s\n", "goal: parked RSS < 100 MiB", parked < (100ull << 20) ? "met" : "NOT met");
  std::printf("%zu agents finished\n", finished);
  node.shutdown(std::chrono::seconds(1));
  return parked < (100ull << 20) || agents != 10'000 ? 0 : 3;
}
