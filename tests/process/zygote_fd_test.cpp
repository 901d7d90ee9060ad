// The zygote is started from the node's process: none of the node's descriptors (here a
// listening socket opened without close-on-exec, as Asio opens them) may reach it. And a
// node out of descriptors (RLIMIT_NOFILE) fails the runs that need one, saying so.
#include <doctest/doctest.h>

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sojourn/sandbox/process_jail.hpp"

TEST_CASE("the zygote inherits only the standard streams and its channel, not the node's sockets") {
  const int low = ::socket(AF_INET, SOCK_STREAM, 0);  // no SOCK_CLOEXEC, on purpose
  REQUIRE(low >= 0);
  const int listener = ::fcntl(low, F_DUPFD, 40);   // above the zygote's own descriptors
  ::close(low);
  REQUIRE(listener >= 40);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // SAFETY: sockaddr_in is a sockaddr of the size given.
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 4) == 0);

  auto jail = sojourn::sandbox::ProcessJail::start({});
  REQUIRE(jail.ok());
  const int zygote = (*jail)->status().zygote_pid;
  REQUIRE(zygote > 0);
  std::set<int> fds;
  const std::string dir = "/proc/" + std::to_string(zygote) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  REQUIRE(d != nullptr);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') fds.insert(std::stoi(e->d_name));
  }
  ::closedir(d);
  CHECK(fds.count(listener) == 0);
  CHECK(fds.count(3) == 1);  // its channel to the host
  for (int fd : fds) CHECK_MESSAGE(fd <= 3, "the zygote holds descriptor " << fd);
  ::close(listener);
}

namespace {

// An RLIMIT_NOFILE that leaves this process exactly `free` descriptors to open (the lowest
// unused numbers; the ones open above stay open).
rlim_t limit_leaving(int free) {
  std::set<int> open;
  DIR* d = ::opendir("/proc/self/fd");
  REQUIRE(d != nullptr);
  const int listing = ::dirfd(d);  // closed again below: not in use after
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.' && std::stoi(e->d_name) != listing) open.insert(std::stoi(e->d_name));
  }
  ::closedir(d);
  int fd = 0;
  for (int found = 0;; ++fd) {
    if (open.count(fd) == 0 && ++found == free) break;
  }
  return static_cast<rlim_t>(fd + 1);
}

// node.call('hold') keeps each run that got that far inside it until every run either got
// there or failed, so the runs hold their descriptors at the same time.
class HoldingHost : public sojourn::sandbox::HostCalls {
 public:
  explicit HoldingHost(int runs) : runs_(runs) {}
  sojourn::Result<sojourn::Value> call(std::string_view, const sojourn::Value&) override {
    std::unique_lock lock(mutex_);
    ++inside_;
    changed_.notify_all();
    changed_.wait_for(lock, std::chrono::seconds(20), [this] { return inside_ + failed_ >= runs_; });
    return sojourn::Value(static_cast<std::int64_t>(7));
  }
  void failed() {
    std::lock_guard lock(mutex_);
    ++failed_;
    changed_.notify_all();
  }

 private:
  const int runs_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int inside_ = 0;
  int failed_ = 0;
};

}  // namespace

TEST_CASE("runs that find the node out of descriptors fail saying so, and the jail serves again after") {
  sojourn::sandbox::ProcessJailOptions options;
  options.warm_guests = 0;  // no refill thread taking descriptors beside the runs
  auto jail = sojourn::sandbox::ProcessJail::start(options);
  REQUIRE(jail.ok());
  sojourn::sandbox::RunInput input;
  input.source = "return node.call('hold') + 1";
  input.limits = sojourn::Limits{10'000'000, 16u << 20, 30'000};

  // One run before the limit is tightened. Under UBSan, the first check of a dynamic type
  // (a virtual call, a thread's state at its exit) opens a pipe to probe the object's memory
  // and reports "invalid vptr" when it cannot: inside the tight window below, that pipe meets
  // EMFILE. The warm-up checks the host's and the jail's types while descriptors are free,
  // and the threads below end only once the limit is back.
  HoldingHost warm(1);
  auto warmed = (*jail)->run(input, &warm);
  REQUIRE_MESSAGE(warmed.ok(), (warmed.ok() ? "" : warmed.error().message));

  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  // Room for a few runs (each holds its channel and its guest's pidfd), not for all of them:
  // the others meet EMFILE at their socketpair or, when another run took the descriptor the
  // pidfd was to land in, at the pidfd the zygote sends back.
  constexpr int kRuns = 16;
  rlimit tight = saved;
  tight.rlim_cur = limit_leaving(7);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &tight) == 0);
  HoldingHost host(kRuns);
  std::vector<std::string> errors(kRuns);
  std::vector<std::thread> threads;
  std::mutex gate_mutex;
  std::condition_variable gate_changed;
  int finished = 0;
  bool restored = false;
  bool restored_limit = false;
  for (int i = 0; i < kRuns; ++i) {
    threads.emplace_back([&, i] {
      auto done = [&] {
        std::unique_lock lock(gate_mutex);
        ++finished;
        gate_changed.notify_all();
        gate_changed.wait(lock, [&] { return restored; });
      };
      auto r = (*jail)->run(input, &host);
      if (!r) {
        errors[static_cast<std::size_t>(i)] = r.error().message;
        host.failed();
      } else if (!r->get(1).is_integer() || r->get(1).as_integer() != 8) {
        errors[static_cast<std::size_t>(i)] = "wrong result";
        host.failed();
      }
      done();
    });
  }
  {
    std::unique_lock lock(gate_mutex);
    gate_changed.wait(lock, [&] { return finished == kRuns; });
    restored = true;  // the threads are released even if the limit could not be put back
    restored_limit = ::setrlimit(RLIMIT_NOFILE, &saved) == 0;
    gate_changed.notify_all();
  }
  for (auto& t : threads) t.join();
  REQUIRE(restored_limit);

  int failures = 0;
  for (const std::string& e : errors) {
    if (e.empty()) continue;
    ++failures;
    // "internal error: socketpair: Too many open files" or "internal error: a guest's pidfd
    // could not be received: Too many open files (the node is at its RLIMIT_NOFILE)".
    CHECK_MESSAGE(e.find("Too many open files") != std::string::npos, "a run failed with: '" << e << "'");
  }
  INFO("failures: " << failures);
  CHECK(failures >= kRuns - 3);  // at most 3 runs' descriptors fit in 7
  // The zygote and the jail are fine: the next run, with descriptors to spare, succeeds.
  HoldingHost one(1);
  auto after = (*jail)->run(input, &one);
  REQUIRE_MESSAGE(after.ok(), (after.ok() ? "" : after.error().message));
  CHECK(after->get(1).as_integer() == 8);
}
