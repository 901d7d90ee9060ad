// The guest's C++ heap takes no lock (sandbox/guest/guest_heap.cpp): every process that runs
// it has one thread. This fails if a zygote or a guest ever has a second one (the filter's
// and the microVM's tables: single_thread_filter_test.cpp, kvm/single_thread_table_test.cpp).
#include <doctest/doctest.h>

#include <dirent.h>
#include <sys/socket.h>

#include <chrono>
#include <string>
#include <vector>

#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/host_channel.hpp"
#include "sandbox/process/zygote_link.hpp"
#include "sojourn/sandbox/process_jail.hpp"

using namespace sojourn;
using namespace sojourn::sandbox;

namespace {

// Threads of `pid` (entries of /proc/<pid>/task), or -1 when it cannot be read.
int threads_of(int pid) {
  DIR* dir = ::opendir(("/proc/" + std::to_string(pid) + "/task").c_str());
  if (dir == nullptr) return -1;
  int threads = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++threads;
  }
  ::closedir(dir);
  return threads;
}

}  // namespace

TEST_CASE("a zygote and the guests it forks run one thread each") {
  constexpr Limits kLimits{10'000'000, 16u << 20, 5000};
  Result<std::string> guest = find_guest_binary("");
  REQUIRE(guest.ok());
  Result<std::shared_ptr<ZygoteLink>> link = ZygoteLink::start(*guest, true);
  REQUIRE_MESSAGE(link.ok(), (link.ok() ? "" : link.error().message));
  CHECK(threads_of((*link)->pid()) == 1);

  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  UniqueFd ours(pair[0]);
  Result<SpawnedGuest> spawned = (*link)->spawn(kLimits, false, UniqueFd(pair[1]));
  REQUIRE_MESSAGE(spawned.ok(), (spawned.ok() ? "" : spawned.error().message));
  HostChannel channel(std::move(ours), std::chrono::steady_clock::now() + std::chrono::seconds(20), nullptr);
  // A run that allocates on the C++ side (a result of many values), then the guest waits.
  const std::vector<std::uint8_t> request = channel::encode_frame(
      channel::RunRequest{"local t = {} for i = 1, 2000 do t[i] = ('x'):rep(i % 50) end return t", "", Value::table(),
                          kLimits, false});
  Conversation c = converse(channel, request, channel::Kind::run_done, kLimits, nullptr);
  REQUIRE(c.done.has_value());
  Result<Value> answer = run_outcome(*c.done);
  REQUIRE_MESSAGE(answer.ok(), (answer.ok() ? "" : answer.error().message));
  CHECK(answer->get(1).length() == 2000);
  CHECK(threads_of(spawned->pid) == 1);
  CHECK(threads_of((*link)->pid()) == 1);
}
