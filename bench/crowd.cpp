// bench_crowd: N agents (default 1,000) each inside a step in the process jail at the same
// time on one node (issue 15's memory goal). The node runs here as a user starts it: no
// policy, peers' code at its strongest level (the process jail where KVM cannot run the
// guest); a second node, in a child process of its own, launches the agents there over TCP.
// Each step calls the service crowd.arrive, which holds it until all N are inside their
// steps; then the bench samples each guest's PSS (the guests are the jail zygote's
// children) and the node's RSS, releases them, and checks every agent's result.
//
//   bench_crowd [--agents N] [--workers W] [--wall-ms MS] [--launch-threads K] [--no-peer]
//
// A step runs on one of the node's worker threads from start to end (a host call blocks
// that thread), so N steps at once need NodeOptions::worker_threads >= N: W defaults to
// N + 2 (two spare for the launch service).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/stats.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/log.hpp"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using namespace sojourn;

constexpr std::int64_t kReleaseToken = 1'000'003;

// Each step waits in crowd.arrive; its result proves it got the release and kept its state.
constexpr const char* kCrowdAgent = R"(
local M = {}
function M.start(s)
  local token = node.call('crowd.arrive', s.i)
  return s.i * 3 + token
end
return M)";

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }
double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// A "Key:   N kB" line of a /proc file, in bytes; 0 when missing or unreadable.
std::uint64_t proc_kb_field(const std::string& path, const char* key) {
  std::ifstream in(path);
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, n, key) == 0) return std::strtoull(line.c_str() + n, nullptr, 10) * 1024;
  }
  return 0;
}

struct Memory {
  std::uint64_t rss = 0;
  std::uint64_t pss = 0;
  bool readable = false;
};

Memory memory_of(int pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/smaps_rollup";
  Memory m;
  m.rss = proc_kb_field(path, "Rss:");
  m.pss = proc_kb_field(path, "Pss:");
  m.readable = m.rss != 0;
  return m;
}

// The children of every thread of `pid` (a child belongs to the thread that forked it).
std::vector<int> children_of(int pid) {
  std::vector<int> out;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(task.path() / "children");
    int child = 0;
    while (in >> child) out.push_back(child);
  }
  return out;
}

std::string cmdline_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (char& c : s) c = c == '\0' ? ' ' : c;
  return s;
}

// The process jail's zygote: this process's child started with --zygote (0 when none).
int find_zygote() {
  for (int child : children_of(static_cast<int>(::getpid()))) {
    if (cmdline_of(child).find("--zygote") != std::string::npos) return child;
  }
  return 0;
}

Result<Bundle> crowd_bundle(std::uint32_t wall_ms) {
  auto bundle = single_file_bundle("crowd", kCrowdAgent);
  if (bundle) bundle->manifest.quotas.wall_ms = wall_ms;  // the whole step, its wait included
  return bundle;
}

// The launcher: a second node, in its own process, that launches the agents at `peer` from
// `threads` threads (agent i from thread i % threads) and prints "launched I ID" or "failed I
// MESSAGE" for each, then "took SECONDS".
int launcher_main(const std::string& peer, std::size_t agents, std::uint32_t wall_ms, std::size_t threads) {
  set_log_level(LogLevel::error);
  NodeOptions o;
  o.name = "crowd-launcher";
  o.worker_threads = 1;
  Node launcher(o);
  auto bundle = crowd_bundle(wall_ms);
  if (!bundle) {
    std::printf("failed 0 %s\n", bundle.error().message.c_str());
    return 1;
  }
  std::atomic<int> failures{0};
  std::mutex out;
  const auto started = Clock::now();
  auto launch_some = [&](std::size_t first) {
    for (std::size_t i = first; i < agents; i += threads) {
      AgentLaunch l;
      l.bundle = *bundle;
      l.state = Value::table();
      l.state.set("i", static_cast<std::int64_t>(i));
      auto id = launcher.launch(peer, std::move(l));
      std::lock_guard lock(out);
      if (id) {
        std::printf("launched %zu %s\n", i, id->c_str());
      } else {
        std::printf("failed %zu %s\n", i, id.error().message.c_str());
        ++failures;
      }
      std::fflush(stdout);
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t t = 0; t < threads; ++t) pool.emplace_back(launch_some, t);
  for (auto& t : pool) t.join();
  std::printf("took %.3f\n", seconds_between(started, Clock::now()));
  std::fflush(stdout);
  launcher.shutdown(std::chrono::seconds(1));
  return failures == 0 ? 0 : 1;
}

// crowd.arrive: counts the steps inside it and holds each until the bench releases them.
class Barrier {
 public:
  explicit Barrier(std::chrono::milliseconds hold) : hold_(hold) {}

  Result<Value> arrive() {
    std::unique_lock lock(mutex_);
    ++inside_;
    const auto now = Clock::now();
    if (inside_ == 1) first_ = now;
    last_ = now;
    changed_.notify_all();
    const bool released = changed_.wait_until(lock, now + hold_, [this] { return released_; });
    --inside_;
    if (!released) return make_error(Errc::deadline, "crowd.arrive: the bench did not release the crowd in time");
    return Value(kReleaseToken);
  }

  // Waits until `count` steps are inside, or until `deadline`; the count inside then.
  std::size_t wait_for(std::size_t count, Clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    changed_.wait_until(lock, deadline, [&] { return inside_ >= count; });
    return inside_;
  }

  void release() {
    std::lock_guard lock(mutex_);
    released_ = true;
    changed_.notify_all();
  }

  Clock::time_point first() {
    std::lock_guard lock(mutex_);
    return first_;
  }
  Clock::time_point last() {
    std::lock_guard lock(mutex_);
    return last_;
  }

 private:
  std::chrono::milliseconds hold_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::size_t inside_ = 0;
  bool released_ = false;
  Clock::time_point first_{}, last_{};
};

// The launcher's output as it comes: the agents' ids by index and the launches that failed.
class LauncherOutput {
 public:
  explicit LauncherOutput(std::size_t agents) : ids_(agents) {}

  void read_all(FILE* from) {
    char* line = nullptr;
    std::size_t cap = 0;
    ssize_t got;
    while ((got = ::getline(&line, &cap, from)) > 0) {
      std::string s(line, static_cast<std::size_t>(got));
      if (!s.empty() && s.back() == '\n') s.pop_back();
      std::lock_guard lock(mutex_);
      std::istringstream words(s);
      std::string kind, rest;
      std::size_t index = 0;
      words >> kind;
      if (kind == "took") {
        words >> took_s_;
        continue;
      }
      words >> index;
      std::getline(words >> std::ws, rest);
      if (kind == "launched" && index < ids_.size()) {
        ids_[index] = rest;
      } else {
        failures_.push_back(kind == "failed" ? rest : s);  // that index has no agent
      }
    }
    std::free(line);
    std::lock_guard lock(mutex_);
    ended_ = true;
  }
  std::vector<std::string> ids() {
    std::lock_guard lock(mutex_);
    return ids_;
  }
  std::vector<std::string> failures() {
    std::lock_guard lock(mutex_);
    return failures_;
  }
  bool ended() {
    std::lock_guard lock(mutex_);
    return ended_;
  }
  double took_s() {
    std::lock_guard lock(mutex_);
    return took_s_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> ids_;
  std::vector<std::string> failures_;
  bool ended_ = false;
  double took_s_ = 0;
};

struct Peak {
  std::size_t inside = 0;
  int zygote = 0;
  std::size_t guests = 0;
  std::size_t unreadable = 0;
  std::vector<double> guest_pss;  // bytes
  double guest_pss_sum = 0;
  double guest_rss_sum = 0;
  Memory node, zygote_memory;
};

Peak sample(std::size_t inside) {
  Peak p;
  p.inside = inside;
  p.node = memory_of(static_cast<int>(::getpid()));
  p.zygote = find_zygote();
  if (p.zygote == 0) return p;
  p.zygote_memory = memory_of(p.zygote);
  for (int guest : children_of(p.zygote)) {
    ++p.guests;
    Memory m = memory_of(guest);
    if (!m.readable) {
      ++p.unreadable;
      continue;
    }
    p.guest_pss.push_back(static_cast<double>(m.pss));
    p.guest_pss_sum += static_cast<double>(m.pss);
    p.guest_rss_sum += static_cast<double>(m.rss);
  }
  return p;
}


// The peer: one bubblewrap-jailed LuaJIT process per agent (`bwrap --unshare-all --ro-bind / /
// luajit`), each started at once, saying it is in, then blocked reading its stdin (one pipe
// shared by all) until the bench closes it. PSS is summed over each instance's process tree.
struct PeerCrowd {
  bool ran = false;
  std::string skipped;  // why it did not run
  std::size_t inside = 0;
  std::size_t exited_ok = 0;
  std::vector<double> pss;  // bytes, one per instance
  double pss_sum = 0;
  double all_inside_s = 0;
};

double tree_pss(int pid) {
  double sum = static_cast<double>(memory_of(pid).pss);
  for (int child : children_of(pid)) sum += tree_pss(child);
  return sum;
}

PeerCrowd run_peer_crowd(std::size_t agents) {
  PeerCrowd peer;
  const char* bwrap = "/usr/bin/bwrap";
  const char* luajit = "/usr/bin/luajit";
  if (::access(bwrap, X_OK) != 0 || ::access(luajit, X_OK) != 0) {
    peer.skipped = "needs /usr/bin/bwrap and /usr/bin/luajit (Debian packages bubblewrap, luajit)";
    return peer;
  }
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
    peer.skipped = std::string("pipe2: ") + std::strerror(errno);
    return peer;
  }
  std::vector<const char*> argv{bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", luajit, "-e",
                                "local s = {i = 1} io.write('in\\n') io.flush() io.read('*a') os.exit(s.i * 0)",
                                nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  const auto started = Clock::now();
  std::vector<pid_t> pids;
  for (std::size_t i = 0; i < agents; ++i) {
    pid_t pid = 0;
    // SAFETY: posix_spawn does not modify the argument strings.
    const int rc = posix_spawn(&pid, bwrap, &actions, nullptr, const_cast<char* const*>(argv.data()), environ);
    if (rc != 0) {
      peer.skipped = std::string("posix_spawn bwrap: ") + std::strerror(rc);
      break;
    }
    pids.push_back(pid);
  }
  posix_spawn_file_actions_destroy(&actions);
  ::close(in[0]);
  ::close(out[1]);
  // Each instance writes "in\n" once it runs its Lua; the pipe holds all of them.
  char buffer[4096];
  while (peer.inside < pids.size()) {
    const ssize_t n = ::read(out[0], buffer, sizeof buffer);
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i) peer.inside += buffer[i] == '\n' ? 1 : 0;
  }
  peer.all_inside_s = seconds_between(started, Clock::now());
  for (pid_t pid : pids) {
    const double pss = tree_pss(pid);
    peer.pss.push_back(pss);
    peer.pss_sum += pss;
  }
  ::close(in[1]);  // end-of-file: every instance exits
  for (pid_t pid : pids) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    peer.exited_ok += WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 1 : 0;
  }
  ::close(out[0]);
  peer.ran = peer.skipped.empty();
  return peer;
}
}  // namespace

int main(int argc, char** argv) {
  std::size_t agents = 1'000;
  std::size_t workers = 0;
  std::uint32_t wall_ms = 60'000;  // the most a node allows by default (NodeOptions::max_limits)
  std::string launch_to;
  std::size_t launch_threads = 1;
  bool with_peer = true;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--agents") == 0 && has_value) {
      agents = std::strtoull(argv[++i], nullptr, 10);
    } else if (std::strcmp(argv[i], "--workers") == 0 && has_value) {
      workers = std::strtoull(argv[++i], nullptr, 10);
    } else if (std::strcmp(argv[i], "--wall-ms") == 0 && has_value) {
      wall_ms = static_cast<std::uint32_t>(std::strtoul(argv[++i], nullptr, 10));
    } else if (std::strcmp(argv[i], "--no-peer") == 0) {
      with_peer = false;
    } else if (std::strcmp(argv[i], "--launch-threads") == 0 && has_value) {
      launch_threads = std::strtoull(argv[++i], nullptr, 10);
    } else if (std::strcmp(argv[i], "--launch-to") == 0 && has_value) {
      launch_to = argv[++i];  // internal: the launcher's process
    } else {
      std::fprintf(stderr, "usage: bench_crowd [--agents N] [--workers W] [--wall-ms MS] [--launch-threads K] [--no-peer]\n");
      return 2;
    }
  }
  if (agents == 0 || wall_ms < 5'000) {
    std::fprintf(stderr, "--agents must be at least 1 and --wall-ms at least 5000\n");
    return 2;
  }
  if (launch_threads == 0) launch_threads = 1;
  if (!launch_to.empty()) return launcher_main(launch_to, agents, wall_ms, launch_threads);
  if (workers == 0) workers = agents + 2;
  if (workers < agents) {
    std::fprintf(stderr, "--workers %zu < --agents %zu: a step holds its worker thread, so at most %zu run at once\n",
                 workers, agents, workers);
    return 2;
  }
  set_log_level(LogLevel::error);

  NodeOptions o;
  o.name = "crowd";
  o.worker_threads = workers;
  Node node(o);
  // The bench holds each step here for at most the step's wall time, less a margin to answer.
  Barrier barrier(std::chrono::milliseconds(wall_ms - 2'000));
  node.register_service("crowd.arrive", [&barrier](const Value&) { return barrier.arrive(); });
  auto bound = node.listen("127.0.0.1:0");
  if (!bound) {
    std::fprintf(stderr, "listen: %s\n", bound.error().message.c_str());
    return 1;
  }
  // Starts the node's jails (the zygote) before the clock, as a running node has them.
  const Isolation level = node.peer_isolation();
  if (level == Isolation::trusted) {
    std::fprintf(stderr, "this node runs peers' code at 'trusted': no jail to measure\n");
    return 1;
  }

  const Memory node_before = memory_of(static_cast<int>(::getpid()));
  // The launcher: this program again, in launcher mode, its stdout a pipe to us.
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    std::perror("pipe2");
    return 1;
  }
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string agents_arg = std::to_string(agents), wall_arg = std::to_string(wall_ms);
  const std::string threads_arg = std::to_string(launch_threads);
  std::vector<char*> child_argv{const_cast<char*>(self.c_str()), const_cast<char*>("--launch-to"),
                                const_cast<char*>(bound->c_str()), const_cast<char*>("--agents"),
                                const_cast<char*>(agents_arg.c_str()), const_cast<char*>("--wall-ms"),
                                const_cast<char*>(wall_arg.c_str()), const_cast<char*>("--launch-threads"),
                                const_cast<char*>(threads_arg.c_str()), nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  const auto started = Clock::now();
  pid_t launcher = 0;
  const int spawned = posix_spawn(&launcher, self.c_str(), &actions, nullptr, child_argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  if (spawned != 0) {
    std::fprintf(stderr, "posix_spawn %s: %s\n", self.c_str(), std::strerror(spawned));
    return 1;
  }
  LauncherOutput launched(agents);
  FILE* from_launcher = ::fdopen(out[0], "r");
  std::thread reader([&] { launched.read_all(from_launcher); });

  // All N inside their steps; or every launch answered and no resident agent is still on its
  // way in (some failed: their steps ended without arriving); or the step's wall time (less
  // margins) is nearly gone: the peak is sampled then.
  const auto give_up = started + std::chrono::milliseconds(wall_ms - 5'000);
  std::size_t inside = 0;
  while (Clock::now() < give_up) {
    inside = barrier.wait_for(agents, std::min(give_up, Clock::now() + std::chrono::milliseconds(200)));
    if (inside >= agents) break;
    if (launched.ended() && node.stats().agents_resident <= inside) break;
  }
  const Peak peak = sample(inside);
  const auto sampled = Clock::now();
  barrier.release();

  reader.join();
  std::fclose(from_launcher);
  int launcher_status = 0;
  ::waitpid(launcher, &launcher_status, 0);
  const std::vector<std::string> ids = launched.ids();
  // Failures by their reason (launches that failed, agents that did not finish right).
  std::map<std::string, std::size_t> problems;
  for (const std::string& f : launched.failures()) ++problems["launch " + f];
  std::size_t finished = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i].empty()) continue;
    auto s = node.wait_agent("", ids[i], std::chrono::minutes(2));
    const std::int64_t want = static_cast<std::int64_t>(i) * 3 + kReleaseToken;
    if (s && s->status == AgentState::finished && s->result.get(1).is_integer() && s->result.get(1).as_integer() == want) {
      ++finished;
    } else {
      ++problems[s ? std::string(agent_state_name(s->status)) + ": " + s->reason : s.error().message];
    }
  }
  const auto done = Clock::now();
  const std::size_t failures = agents - finished;
  // Warm guests left once the crowd is gone (the pool keeps at most warm_guests a principal).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::size_t guests_after = peak.zygote != 0 ? children_of(peak.zygote).size() : 0;

  // bench::summarize is for microseconds; here its fields hold bytes (nearest-rank all the same).
  const bench::LatencySummary pss = bench::summarize(peak.guest_pss);
  // What each step costs the node itself (its worker thread's stack, the agent's record).
  const double node_growth =
      peak.node.pss > node_before.pss ? static_cast<double>(peak.node.pss - node_before.pss) / static_cast<double>(agents) : 0;
  std::printf("%zu agents at once, each inside a step at '%s' on one node (%zu worker threads, warm_guests %u; "
              "launched from %zu thread(s))\n",
              agents, std::string(isolation_name(level)).c_str(), workers, o.warm_guests, launch_threads);
  std::printf("%-50s %14s\n", "measure", "value");
  std::printf("%-50s %14zu\n", "agents", agents);
  std::printf("%-50s %14zu\n", "failures", failures);
  std::printf("%-50s %14zu\n", "steps inside at the peak", peak.inside);
  std::printf("%-50s %14zu\n", "guests alive at the peak", peak.guests);
  if (peak.unreadable != 0) std::printf("%-50s %14zu\n", "guests whose smaps were unreadable", peak.unreadable);
  std::printf("%-50s %10.0f KiB\n", "PSS per guest, median", pss.median_us / 1024.0);
  std::printf("%-50s %10.0f KiB\n", "PSS per guest, p99", pss.p99_us / 1024.0);
  std::printf("%-50s %10.0f KiB\n", "PSS per guest, max", pss.max_us / 1024.0);
  std::printf("%-50s %10.1f MiB\n", "PSS of all guests", mib(peak.guest_pss_sum));
  std::printf("%-50s %10.1f MiB\n", "RSS of all guests (shared pages counted each time)", mib(peak.guest_rss_sum));
  std::printf("%-50s %10.1f MiB\n", "zygote PSS", mib(static_cast<double>(peak.zygote_memory.pss)));
  std::printf("%-50s %10.1f MiB\n", "node RSS before the launches", mib(static_cast<double>(node_before.rss)));
  std::printf("%-50s %10.1f MiB\n", "node RSS", mib(static_cast<double>(peak.node.rss)));
  std::printf("%-50s %10.1f MiB\n", "node PSS", mib(static_cast<double>(peak.node.pss)));
  std::printf("%-50s %10.0f KiB\n", "node PSS growth per step", node_growth / 1024.0);
  std::printf("%-50s %10.1f MiB\n", "node + zygote + guests, PSS",
              mib(static_cast<double>(peak.node.pss + peak.zygote_memory.pss) + peak.guest_pss_sum));
  if (peak.inside != 0) {
    std::printf("%-50s %12.2f s\n", "first launch to first step inside", seconds_between(started, barrier.first()));
    std::printf("%-50s %12.2f s\n", "first launch to last step inside", seconds_between(started, barrier.last()));
  }
  std::printf("%-50s %12.2f s\n", "the launcher's N launch calls", launched.took_s());
  std::printf("%-50s %12.2f s\n", "release to all finished and checked", seconds_between(sampled, done));
  std::printf("%-50s %14zu\n", "guests alive 0.5 s after the end", guests_after);
  for (const auto& [reason, count] : problems) std::printf("%6zu x %s\n", count, reason.c_str());
  node.shutdown(std::chrono::seconds(1));

  if (with_peer) {
    const PeerCrowd peer = run_peer_crowd(agents);
    if (!peer.ran) {
      std::printf("peer (bwrap + luajit per agent) skipped: %s\n", peer.skipped.c_str());
    } else {
      const bench::LatencySummary ppss = bench::summarize(peer.pss);
      std::printf("peer: %zu x bwrap --unshare-all --ro-bind / / luajit, each blocked on stdin\n", agents);
      std::printf("%-50s %14zu\n", "peer instances inside at the peak", peer.inside);
      std::printf("%-50s %14zu\n", "peer instances that exited 0", peer.exited_ok);
      std::printf("%-50s %10.0f KiB\n", "peer PSS per instance, median", ppss.median_us / 1024.0);
      std::printf("%-50s %10.0f KiB\n", "peer PSS per instance, p99", ppss.p99_us / 1024.0);
      std::printf("%-50s %10.1f MiB\n", "peer PSS of all instances", mib(peer.pss_sum));
      std::printf("%-50s %12.2f s\n", "peer: first spawn to all inside", peer.all_inside_s);
      if (ppss.median_us > 0) {
        std::printf("%-50s %12.2f\n", "ratio: guest PSS median / peer's", pss.median_us / ppss.median_us);
        std::printf("%-50s %12.2f\n", "ratio: (guest + node growth) / peer's, per agent",
                    (pss.median_us + node_growth) / ppss.median_us);
      }
    }
  }
  return failures == 0 && peak.inside == agents ? 0 : 1;
}
