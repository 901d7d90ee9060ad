// A guest forked for a request that already waits on its channel (a cold run) answers it
// before it prepares its warm state; the runs it serves after that one start from a state
// that keeps nothing of the runs before them.
#include <doctest/doctest.h>

#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/host_channel.hpp"
#include "sandbox/process/zygote_link.hpp"
#include "sojourn/sandbox/process_jail.hpp"

using namespace sojourn;
using namespace sojourn::sandbox;

namespace {

constexpr Limits kColdLimits{10'000'000, 16u << 20, 5000};

std::vector<std::uint8_t> run_frame(const std::string& source) {
  return channel::encode_frame(channel::RunRequest{source, "", Value::table(), kColdLimits, false});
}

// One run on the guest's channel; the request is written first unless it already was.
Result<Value> talk(HostChannel& channel, const std::vector<std::uint8_t>& request) {
  Conversation c = converse(channel, request, channel::Kind::run_done, kColdLimits, nullptr);
  if (!c.done) return make_error(Errc::guest_crashed, "no answer");
  return run_outcome(*c.done);
}

constexpr const char* kProbe = "return tostring(leaked) .. ',' .. tostring(rawget(string, 'leaked')) .. ',' .. "
                               "collectgarbage('count')";

}  // namespace

TEST_CASE("a guest whose first request waits at its fork answers it, then serves later runs that see nothing of it") {
  Result<std::string> guest = find_guest_binary("");
  REQUIRE(guest.ok());
  Result<std::shared_ptr<ZygoteLink>> link = ZygoteLink::start(*guest, true);
  REQUIRE_MESSAGE(link.ok(), (link.ok() ? "" : link.error().message));
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  UniqueFd ours(pair[0]);
  // The request is on the channel before the fork: the guest finds it waiting.
  const std::vector<std::uint8_t> first = run_frame("leaked = 42 string.leaked = 7 return leaked + string.leaked");
  REQUIRE(::send(ours.get(), first.data(), first.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(first.size()));
  Result<SpawnedGuest> spawned = (*link)->spawn(kColdLimits, false, UniqueFd(pair[1]));
  REQUIRE_MESSAGE(spawned.ok(), (spawned.ok() ? "" : spawned.error().message));
  HostChannel channel(std::move(ours), std::chrono::steady_clock::now() + std::chrono::seconds(20), nullptr);

  Result<Value> answer = talk(channel, {});  // already sent
  REQUIRE_MESSAGE(answer.ok(), (answer.ok() ? "" : answer.error().message));
  CHECK(answer->get(1).as_integer() == 49);

  // The same guest goes on: its next runs see none of the first one's globals, and each
  // starts from the same state (the same memory count), also after a run that failed.
  Result<Value> second = talk(channel, run_frame(kProbe));
  REQUIRE_MESSAGE(second.ok(), (second.ok() ? "" : second.error().message));
  const std::string seen = second->get(1).as_string();
  CHECK(seen.rfind("nil,nil,", 0) == 0);
  CHECK_FALSE(talk(channel, run_frame("leaked = 1 string.leaked = 2 error('boom')")).ok());
  Result<Value> third = talk(channel, run_frame(kProbe));
  REQUIRE_MESSAGE(third.ok(), (third.ok() ? "" : third.error().message));
  CHECK(third->get(1).as_string() == seen);
}

namespace {

// The address of the restartable-sequence area the kernel knows for `pid` (0: none), read by
// seizing and stopping it for a moment; nullopt when the kernel cannot tell (before 5.13).
std::optional<std::uint64_t> rseq_area_of(pid_t pid) {
  struct RseqConfiguration {  // struct ptrace_rseq_configuration
    std::uint64_t rseq_abi_pointer;
    std::uint32_t rseq_abi_size;
    std::uint32_t signature;
    std::uint32_t flags;
    std::uint32_t pad;
  };
  constexpr int kGetRseqConfiguration = 0x420f;  // PTRACE_GET_RSEQ_CONFIGURATION
  if (::ptrace(PTRACE_SEIZE, pid, nullptr, nullptr) != 0) return std::nullopt;
  ::ptrace(PTRACE_INTERRUPT, pid, nullptr, nullptr);
  int status = 0;
  ::waitpid(pid, &status, __WALL);
  RseqConfiguration config{};
  const long got = ::ptrace(static_cast<__ptrace_request>(kGetRseqConfiguration), pid, sizeof config, &config);
  ::ptrace(PTRACE_DETACH, pid, nullptr, nullptr);
  if (got != static_cast<long>(sizeof config)) return std::nullopt;
  return config.rseq_abi_pointer;
}

}  // namespace

TEST_CASE("the zygote runs without a restartable-sequence area, so no fork of it has one written on its way out") {
  // The check itself sees one where glibc registered it (this test's own fork does).
  const pid_t control = ::fork();
  if (control == 0) {
    ::pause();
    ::_exit(0);
  }
  REQUIRE(control > 0);
  const std::optional<std::uint64_t> in_control = rseq_area_of(control);
  ::kill(control, SIGKILL);
  ::waitpid(control, nullptr, 0);
  if (!in_control) {
    MESSAGE("the kernel does not report rseq areas to a tracer: not checked");
    return;
  }
  CHECK(*in_control != 0);

  Result<std::string> guest = find_guest_binary("");
  REQUIRE(guest.ok());
  Result<std::shared_ptr<ZygoteLink>> link = ZygoteLink::start(*guest, true);
  REQUIRE_MESSAGE(link.ok(), (link.ok() ? "" : link.error().message));
  const std::optional<std::uint64_t> in_zygote = rseq_area_of((*link)->pid());
  REQUIRE(in_zygote.has_value());
  CHECK(*in_zygote == 0);
}
