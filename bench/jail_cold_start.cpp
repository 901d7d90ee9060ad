// bench_jail: cold start to the first Lua result of one run ("return 1"), jailed four
// ways on the same machine: a fork of the process jail's zygote (namespaces, rlimits,
// seccomp), a plain fork+exec of the static guest, bubblewrap alone, and the guest inside
// bubblewrap; plus the in-process trusted level for scale, and the memory (PSS) of an idle
// guest. Prints a table; on a shared VM compare the ratios, not the figures.
#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "bench/stats.hpp"
#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/zygote_link.hpp"
#include "sojourn/sandbox/process_jail.hpp"

extern char** environ;

namespace sojourn::bench {
namespace {

using Clock = std::chrono::steady_clock;
using sandbox::HostChannel;
using sandbox::RunInput;
using sandbox::UniqueFd;

constexpr Limits kLimits{10'000'000, 16u << 20, 5000};

RunInput first_result_input() {
  RunInput input;
  input.source = "return 1";
  input.limits = kLimits;
  return input;
}

// Spawns argv with `channel` as descriptor 3 (when valid); returns the pid or -1.
pid_t spawn(const std::vector<std::string>& args, int channel) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (channel >= 0) posix_spawn_file_actions_adddup2(&actions, channel, 3);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  std::vector<char*> argv;
  // SAFETY: posix_spawn does not modify the argument strings; `args` outlives the call.
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// One run of "return 1" in a guest started by `args` (with the channel as descriptor 3).
bool run_exec_guest(const std::vector<std::string>& args) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return false;
  UniqueFd guest_end(pair[1]);
  const pid_t pid = spawn(args, guest_end.get());
  guest_end.reset();
  if (pid < 0) return false;
  HostChannel channel(UniqueFd{pair[0]}, Clock::now() + std::chrono::seconds(10), nullptr);
  const auto request = sandbox::channel::encode_frame(sandbox::channel::RunRequest{"return 1", "", Value::table(), kLimits, false});
  auto talk = sandbox::converse(channel, request, sandbox::channel::Kind::run_done, kLimits, nullptr);
  if (!talk.done) return false;
  auto result = sandbox::run_outcome(*talk.done);
  const bool ok = result.ok() && result->get(1).as_integer() == 1;
  wait_for(pid);
  return ok;
}

struct Row {
  std::string name;
  std::function<bool()> once;
  std::vector<double> samples;
  std::size_t failures = 0;
};

// Rounds alternate the rows, so that the machine's drift (neighbours on a shared VM) hits
// every row alike instead of whichever ran during a busy spell.
void measure(std::vector<Row>& rows, std::size_t n, std::size_t rounds) {
  for (Row& row : rows) {
    for (std::size_t i = 0; i < 3; ++i) row.once();  // warm the page cache and the allocator
  }
  for (std::size_t round = 0; round < rounds; ++round) {
    for (Row& row : rows) {
      for (std::size_t i = 0; i < n / rounds; ++i) {
        const auto start = Clock::now();
        const bool ok = row.once();
        const auto end = Clock::now();
        if (!ok) {
          ++row.failures;
          continue;
        }
        row.samples.push_back(std::chrono::duration<double, std::micro>(end - start).count());
      }
    }
  }
}

// Proportional set size of a process, from /proc/PID/smaps_rollup, in KiB.
long pss_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string key;
  long value = 0;
  while (in >> key) {
    if (key == "Pss:") {
      in >> value;
      return value;
    }
    in.ignore(4096, '\n');
  }
  return -1;
}

}  // namespace
}  // namespace sojourn::bench

int main(int argc, char** argv) {
  using namespace sojourn;
  using namespace sojourn::bench;
  std::size_t n = 200;
  std::string csv;  // --csv FILE: id,unit,median,p99 per row, for bench/run_peers.sh
  std::string only;  // --only TEXT: only the rows whose name contains TEXT (for a profiler)
  bool usage = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--runs" && i + 1 < argc) {
      n = std::strtoul(argv[++i], nullptr, 10);
    } else if (flag == "--csv" && i + 1 < argc) {
      csv = argv[++i];
    } else if (flag == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      usage = true;
    }
  }
  if (n == 0 || usage) {
    std::fprintf(stderr, "usage: bench_jail [--runs N] [--csv FILE] [--only TEXT]   (N > 0, default 200)\n");
    return 2;
  }
  auto guest = sandbox::find_guest_binary("");
  if (!guest) {
    std::fprintf(stderr, "%s\n", guest.error().message.c_str());
    return 1;
  }
  auto jail = sandbox::ProcessJail::start(sandbox::ProcessJailOptions{});
  if (!jail) {
    std::fprintf(stderr, "%s\n", jail.error().message.c_str());
    return 1;
  }
  sandbox::ProcessJailOptions bare_options;
  bare_options.namespaces = false;
  auto bare_jail = sandbox::ProcessJail::start(bare_options);
  if (!bare_jail) {
    std::fprintf(stderr, "%s\n", bare_jail.error().message.c_str());
    return 1;
  }
  const bool have_bwrap = ::access("/usr/bin/bwrap", X_OK) == 0;
  const RunInput input = first_result_input();

  std::vector<Row> rows;
  rows.push_back({"trusted level, in-process run_lua", [&] { return sandbox::run_lua(input, nullptr).ok(); }});
  rows.push_back({"process jail: zygote fork + jail + run", [&] { return (*jail)->run(input, nullptr).ok(); }});
  // A principal's run: a warm guest forked before the request, reset after the last one.
  RunInput warm_input = input;
  warm_input.principal = "signer bench";
  rows.push_back({"process jail: warm guest of the principal", [&] { return (*jail)->run(warm_input, nullptr).ok(); }});
  rows.push_back({"process jail without namespaces", [&] { return (*bare_jail)->run(input, nullptr).ok(); }});
  rows.push_back({"fork+exec of the static guest (no jail)", [&] { return run_exec_guest({*guest, "--serve"}); }});
  if (have_bwrap) {
    const std::vector<std::string> bwrap{"/usr/bin/bwrap", "--unshare-all", "--ro-bind", "/", "/"};
    auto with = [bwrap](std::vector<std::string> tail) {  // a copy: the rows outlive this block
      auto args = bwrap;
      args.insert(args.end(), tail.begin(), tail.end());
      return args;
    };
    rows.push_back({"bwrap --unshare-all --ro-bind / / true", [&, with] {
      const pid_t pid = spawn(with({"/bin/true"}), -1);
      return pid > 0 && WIFEXITED(wait_for(pid));
    }});
    rows.push_back({"bwrap ... sojourn-guest --serve (run)", [&, with] { return run_exec_guest(with({*guest, "--serve"})); }});
  }
  if (!only.empty()) {
    // Under a profiler: the other rows go, and so do the CSV ids (they are by position).
    std::erase_if(rows, [&](const Row& row) { return row.name.find(only) == std::string::npos; });
    csv.clear();
    if (rows.empty()) {
      std::fprintf(stderr, "bench_jail: no row's name contains \"%s\"\n", only.c_str());
      return 2;
    }
  }
  constexpr std::size_t kRounds = 10;
  n = std::max(n, kRounds) / kRounds * kRounds;
  measure(rows, n, kRounds);

  const auto status = (*jail)->status();
  std::printf("cold start to the first Lua result (\"return 1\"), %zu runs each in %zu alternating rounds; guest %s\n", n,
              kRounds, guest->c_str());
  std::printf("zygote namespaces: %s%s%s\n\n", status.namespaces.empty() ? "none" : status.namespaces.c_str(),
              status.namespace_fallback.empty() ? "" : "; missing: ", status.namespace_fallback.c_str());
  std::vector<LatencySummary> summaries;
  for (const Row& row : rows) summaries.push_back(summarize(row.samples));
  const double base = summaries[std::min<std::size_t>(1, summaries.size() - 1)].median_us;
  std::printf("%-44s %12s %12s %14s %9s\n", "start + run", "median us", "p99 us", "median/jail", "failed");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    std::printf("%-44s %12.0f %12.0f %14.2f %9zu\n", rows[i].name.c_str(), summaries[i].median_us, summaries[i].p99_us,
                base > 0 ? summaries[i].median_us / base : 0.0, rows[i].failures);
  }

  if (!csv.empty()) {
    static const char* const kIds[] = {"trusted_run", "jail_cold", "jail_warm", "jail_no_namespaces", "exec_guest",
                                       "bwrap_true", "bwrap_guest"};
    if (std::FILE* out = std::fopen(csv.c_str(), "w")) {
      std::fprintf(out, "id,unit,median,p99\n");
      for (std::size_t i = 0; i < rows.size() && i < std::size(kIds); ++i) {
        std::fprintf(out, "%s,us,%.1f,%.1f\n", kIds[i], summaries[i].median_us, summaries[i].p99_us);
      }
      std::fclose(out);
    }
  }

  if (!only.empty()) return 0;  // a profiled row alone
  // Memory: an idle guest waits for its request on the channel.
  std::printf("\nmemory of an idle guest (PSS from /proc/PID/smaps_rollup)\n");
  {
    auto link = sandbox::ZygoteLink::start(*guest, true);
    if (link) {
      std::vector<sandbox::SpawnedGuest> idle;
      std::vector<UniqueFd> channels;
      for (int i = 0; i < 8; ++i) {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) break;
        channels.emplace_back(pair[0]);
        auto spawned = (*link)->spawn(kLimits, false, UniqueFd(pair[1]));
        if (spawned) idle.push_back(std::move(*spawned));
      }
      ::usleep(100'000);
      long total = 0;
      for (const auto& g : idle) total += pss_kib(g.pid);
      std::printf("  zygote fork (8 idle guests, 16 MiB quota each): %ld KiB each; the zygote itself: %ld KiB\n",
                  idle.empty() ? 0 : total / static_cast<long>(idle.size()), pss_kib((*link)->pid()));
    }
  }
  {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0) {
      UniqueFd ours(pair[0]);
      UniqueFd theirs(pair[1]);
      const pid_t pid = spawn({*guest, "--serve"}, theirs.get());
      theirs.reset();
      ::usleep(100'000);
      std::printf("  fork+exec of the guest, waiting for a request: %ld KiB\n", pss_kib(pid));
      ours.reset();
      wait_for(pid);
    }
  }
  return 0;
}
