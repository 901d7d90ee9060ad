// ProcessJail: finds the guest binary, keeps one zygote alive (restarting it when it dies),
// and runs each chunk in a guest of its own.
#include "sojourn/sandbox/process_jail.hpp"

#include <linux/sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <vector>

#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/process/guest_pool.hpp"
#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/host_channel.hpp"
#include "sandbox/process/zygote_link.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn::sandbox {

namespace {

namespace fs = std::filesystem;

constexpr const char* kGuestName = "sojourn-guest";
// The CPU time a warm guest may use in its life (its hard RLIMIT_CPU): a guest whose next
// run's budget would pass it is retired.
constexpr std::uint32_t kWarmGuestCpuSeconds = 600;

std::uint64_t micros_since(std::chrono::steady_clock::time_point t0) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
}

bool executable(const fs::path& path) { return ::access(path.c_str(), X_OK) == 0 && fs::is_regular_file(path); }

std::string namespace_names(std::uint32_t flags) {
  std::string names;
  for (auto [flag, name] : {std::pair{CLONE_NEWUSER, "user"}, {CLONE_NEWNET, "net"}, {CLONE_NEWNS, "mount"},
                            {CLONE_NEWPID, "pid"}, {CLONE_NEWIPC, "ipc"}}) {
    if ((flags & static_cast<std::uint32_t>(flag)) == 0) continue;
    if (!names.empty()) names += ' ';
    names += name;
    if (flag == CLONE_NEWNET && (flags & channel::kSharedNetNamespace) != 0) names += "(shared)";
  }
  return names;
}

}  // namespace

Result<std::string> find_guest_binary(const std::string& explicit_path) {
  std::vector<fs::path> tried;
  auto found = [&](const fs::path& candidate) {
    tried.push_back(candidate);
    return executable(candidate);
  };
  if (!explicit_path.empty()) {
    if (found(explicit_path)) return explicit_path;
  } else {
    if (const char* env = std::getenv("SOJOURN_GUEST"); env != nullptr && *env != '\0') {
      // An operator's explicit choice: never replaced by another binary found elsewhere.
      if (found(env)) return std::string(env);
      return make_error(Errc::jail_unavailable,
                        "process jail unavailable: no guest binary at $SOJOURN_GUEST=" + std::string(env));
    }
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec && found(self.parent_path() / kGuestName)) return (self.parent_path() / kGuestName).string();
    // An installed tree moved elsewhere: PREFIX/bin/app finds PREFIX/libexec/sojourn/sojourn-guest.
    const fs::path relocated = self.parent_path().parent_path() / "libexec" / "sojourn" / kGuestName;
    if (!ec && found(relocated)) return relocated.string();
#ifdef SOJOURN_GUEST_INSTALL_PATH
    if (found(SOJOURN_GUEST_INSTALL_PATH)) return std::string(SOJOURN_GUEST_INSTALL_PATH);
#endif
#ifdef SOJOURN_GUEST_BUILD_PATH
    if (found(SOJOURN_GUEST_BUILD_PATH)) return std::string(SOJOURN_GUEST_BUILD_PATH);
#endif
  }
  std::string list;
  for (const auto& p : tried) list += (list.empty() ? "" : ", ") + p.string();
  return make_error(Errc::jail_unavailable, "process jail unavailable: no guest binary (tried " + list + ")");
}

namespace {

// The process level: one zygote, restarted when it dies, forks a guest per run.
class ZygoteJail final : public ProcessJail {
 public:
  ZygoteJail(ProcessJailOptions options, std::string guest_path)
      : options_(std::move(options)),
        guest_path_(std::move(guest_path)),
        pool_(GuestPoolOptions{options_.warm_guests, options_.max_warm_guests},
              [this](const PoolKey& key) { return spawn_warm(key); }) {}

  Result<void> start_zygote() {
    Result<std::shared_ptr<ZygoteLink>> link = ZygoteLink::start(guest_path_, options_.namespaces);
    if (!link) return link.error();
    if (!(*link)->hello().fallback.empty()) {
      log_warn("process jail", "guests run without some namespaces: " + (*link)->hello().fallback);
    }
    zygote_ = std::move(*link);
    ++zygote_starts_;
    return {};
  }

  // The live zygote, restarted when the last one died.
  Result<std::shared_ptr<ZygoteLink>> zygote() {
    std::lock_guard lock(mutex_);
    if (!zygote_ || !zygote_->alive()) {
      log_warn("process jail", "the zygote died; starting a new one");
      zygote_.reset();
      if (Result<void> started = start_zygote(); !started) return started.error();
    }
    return zygote_;
  }

  Result<Value> run(const RunInput& input, HostCalls* host) override {
    if (Result<void> ok = check_run_input(input); !ok) return ok.error();
    Result<std::vector<std::uint8_t>> done = in_guest(input, run_request_frame(input, host), channel::Kind::run_done, host);
    if (!done) return done.error();
    return run_outcome(*done);
  }

  Result<AgentOutcome> run_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) override {
    if (Result<void> ok = check_run_input(input); !ok) return ok.error();
    channel::AgentRequest request{make_run_request(input, host), std::string(agent.entry), agent.state, agent.info};
    std::uint64_t cpu_us = 0;  // measured by the kernel, not reported by the guest
    Result<std::vector<std::uint8_t>> done =
        in_guest(input, channel::encode_frame(request), channel::Kind::agent_done, host, &cpu_us);
    if (!done) return done.error();
    Result<AgentOutcome> outcome = agent_outcome(*done);
    if (outcome) outcome->host_cpu_us = cpu_us;
    return outcome;
  }

  Result<StrongOutcome> run_strong(const RunInput& input, const AgentInput& agent, HostCalls* host) override {
    if (Result<void> ok = check_run_input(input); !ok) return ok.error();
    channel::AgentRequest request{make_run_request(input, host), std::string(agent.entry), agent.state, agent.info, true, true};
    return strong_in_guest(input, channel::encode_frame(request), host, nullptr);
  }

  Result<StrongOutcome> resume_strong(std::span<const std::uint8_t> bytes, const RunInput& input, const Value& info,
                                      HostCalls* host, const std::array<std::uint8_t, 32>* hashed = nullptr) override {
    if (Result<void> ok = check_run_input(input); !ok) return ok.error();
    // The image is checked up to its page map here; its kept pages are decompressed once the
    // guest waits for them (heap_ready), straight into its arena (strong_pages.hpp).
    Result<std::array<std::uint8_t, 32>> build = image::guest_build_id(guest_path_);
    if (!build) return build.error();
    const std::size_t arena_bytes = guest::arena_bytes_for_quota(input.limits.memory_bytes);
    const auto t0 = std::chrono::steady_clock::now();
    // Hashed once per arrival: by the node's TRANSFER check when it says so (`hashed`), here otherwise.
    Result<image::ImageOpener> opener = image::ImageOpener::check(bytes, {*build, guest::kArenaBase, arena_bytes}, hashed);
    if (!opener) return opener.error();
    const image::ImageHeader& header = opener->header();
    if (header.arena_bytes != arena_bytes) {
      return make_error(Errc::sandbox_refused, "refused by the sandbox: heap image: its arena of " +
                                                   std::to_string(header.arena_bytes) +
                                                   " bytes needs the memory limit it was taken under (this step's gives " +
                                                   std::to_string(arena_bytes) + " bytes)");
    }
    const std::span<const std::uint8_t> map = opener->page_map();
    channel::ResumeRequest request{make_run_request(input, host), info, header.agent_handle, header.arena_bytes,
                                   header.used_bytes, std::string(map.begin(), map.end()), true};
    const std::uint64_t checked_us = micros_since(t0);
    Result<StrongOutcome> outcome = strong_in_guest(input, channel::encode_frame(request), host, &*opener);
    if (outcome) outcome->restore_us += checked_us;
    return outcome;
  }

  // One strong step in a guest: its kept pages cross by the guest's memory where the kernel lets
  // the host (DirectPages), and a strong stop is sealed into an image while the guest waits.
  Result<StrongOutcome> strong_in_guest(const RunInput& input, const std::vector<std::uint8_t>& request, HostCalls* host,
                                        image::ImageOpener* resume) {
    Result<std::array<std::uint8_t, 32>> build = image::guest_build_id(guest_path_);
    if (!build) return build.error();
    const std::size_t arena_bytes = guest::arena_bytes_for_quota(input.limits.memory_bytes);
    DirectPages direct;
    direct.enabled = options_.direct_pages;
    direct.source = image::ImageSource{*build, guest::kArenaBase, arena_bytes, 0, input.image_codec};
    direct.resume = resume;
    std::uint64_t cpu_us = 0;
    std::vector<std::uint8_t> span_frame;  // unused: the stop is sealed in the session
    SessionOptions session{options_.kill_grace_ms, &cpu_us, &span_frame, arena_bytes, &direct};
    Result<std::vector<std::uint8_t>> done = in_guest(input, request, channel::Kind::agent_done, host, session);
    pages_direct_.fetch_add(static_cast<std::uint64_t>(direct.direct), std::memory_order_relaxed);
    pages_by_channel_.fetch_add(static_cast<std::uint64_t>(direct.by_channel), std::memory_order_relaxed);
    if (!done) return done.error();
    if (resume != nullptr && direct.resume != nullptr) {
      return make_error(Errc::guest_crashed, "guest crashed: it answered a resume without taking its pages");
    }
    Result<StrongOutcome> strong = strong_outcome(*done, direct);
    if (!strong) return strong.error();
    strong->step.host_cpu_us = cpu_us;
    strong->restore_us = direct.restore_us;
    return strong;
  }

  Result<std::vector<std::uint8_t>> in_guest(const RunInput& input, const std::vector<std::uint8_t>& request,
                                             channel::Kind done, HostCalls* host, std::uint64_t* cpu_us = nullptr) {
    return in_guest(input, request, done, host, SessionOptions{options_.kill_grace_ms, cpu_us});
  }

  Result<std::vector<std::uint8_t>> in_guest(const RunInput& input, const std::vector<std::uint8_t>& request,
                                             channel::Kind done, HostCalls* host, const SessionOptions& session) {
    // A strong step (a heap span) may start in a warm guest of its principal (a pristine arena,
    // the zygote's build), saving the fork on the hop's path; its guest then ends itself (its
    // arena went into an image or came from one) and is refilled. Only the process jail's
    // sessions (direct set), which mark such a guest spent.
    if (pool_.enabled() && !input.principal.empty() && (session.heap_span == nullptr || session.direct != nullptr)) {
      return in_warm_guest(input, request, done, host, session);
    }
    // A zygote that died since the last run is only noticed when a spawn fails: no guest
    // ran, so the run is tried once more on a new zygote.
    for (int attempt = 0;; ++attempt) {
      Result<std::shared_ptr<ZygoteLink>> link = zygote();
      if (!link) return link.error();
      const std::uint64_t started = counters_.guests_started.load();
      auto result = run_in_guest(**link, input, request, done, host, session, counters_);
      if (result || attempt > 0 || (*link)->alive() || counters_.guests_started.load() != started) return result;
    }
  }

  // A guest forked for `key` that will serve its runs until it is not fit to (the refill
  // thread's spawner, and a run that found no idle guest).
  Result<WarmGuest> spawn_warm(const PoolKey& key) {
    Result<std::shared_ptr<ZygoteLink>> link = zygote();
    if (!link) return link.error();
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
      return errors::internal(std::string("socketpair: ") + std::strerror(errno));
    }
    widen_channel_buffers(pair);
    WarmGuest warm;
    warm.channel = UniqueFd(pair[0]);
    // The fork's limits fix the arena and heaps (by the quota) and the CPU-time rlimit, whose
    // hard limit only a privileged host could raise later: a warm guest gets its lifetime's
    // there, and each run's soft limit is armed below it when the run starts (arm_cpu_limit).
    const Limits for_fork{1, key.memory_bytes, kWarmGuestCpuSeconds * 1000};
    Result<SpawnedGuest> guest = (*link)->spawn(for_fork, key.allow_jit, UniqueFd(pair[1]));
    if (!guest) return guest.error();
    counters_.guests_started.fetch_add(1, std::memory_order_relaxed);
    warm.zygote = std::move(*link);
    warm.guest = std::move(*guest);
    watch_guest(warm);
    return warm;
  }

  Result<std::vector<std::uint8_t>> in_warm_guest(const RunInput& input, const std::vector<std::uint8_t>& request,
                                                  channel::Kind done, HostCalls* host, const SessionOptions& session) {
    const PoolKey key{std::string(input.principal), input.limits.memory_bytes, input.allow_jit};
    std::optional<WarmGuest> warm = pool_.take(key);
    while (warm && !arm_cpu_limit(*warm, input.limits)) {
      // Its lifetime's CPU time would not cover this run's budget: retired.
      discard_guest(*warm);
      pool_.lost(key);
      warm = pool_.take(key);
    }
    if (session.direct != nullptr) session.direct->mark(warm ? "guest_warm" : "guest_forked");  // the trace's
    if (warm) {
      reused_.fetch_add(1, std::memory_order_relaxed);
    } else {
      Result<WarmGuest> fresh = spawn_warm(key);
      // A zygote that died since the last run is only noticed here: once more on a new one.
      if (!fresh) fresh = spawn_warm(key);
      if (!fresh) {
        pool_.lost(key);
        return fresh.error();
      }
      warm = std::move(*fresh);
      if (!arm_cpu_limit(*warm, input.limits)) {
        discard_guest(*warm);
        pool_.lost(key);
        return make_error(Errc::guest_crashed, "guest crashed: its CPU-time limit could not be set up");
      }
    }
    return finish_in_warm_guest(key, *warm, input, request, done, host, session);
  }

  std::optional<Result<Value>> run_if_warm(const RunInput& input, HostCalls* host, std::uint32_t kill_grace_ms) override {
    if (!pool_.enabled() || input.principal.empty()) return std::nullopt;
    if (Result<void> ok = check_run_input(input); !ok) return Result<Value>(ok.error());
    const PoolKey key{std::string(input.principal), input.limits.memory_bytes, input.allow_jit};
    std::optional<WarmGuest> warm = pool_.take(key);
    // One just forked may still be setting its own limits: back to the pool, not waited for.
    if (warm && !guest_limits_set(*warm)) {
      pool_.give_back(key, std::move(*warm));
      return std::nullopt;
    }
    if (warm && !arm_cpu_limit(*warm, input.limits)) {
      discard_guest(*warm);
      warm.reset();
    }
    if (!warm) {
      pool_.lost(key);
      return std::nullopt;
    }
    reused_.fetch_add(1, std::memory_order_relaxed);
    const std::vector<std::uint8_t> request = run_request_frame(input, host);
    Result<std::vector<std::uint8_t>> done =
        finish_in_warm_guest(key, *warm, input, request, channel::Kind::run_done, host, SessionOptions{kill_grace_ms});
    if (!done) return Result<Value>(done.error());
    return run_outcome(*done);
  }

  std::vector<Result<Value>> run_burst(std::span<const RunInput* const> inputs, std::span<HostCalls* const> hosts) override {
    std::vector<Result<Value>> results;
    results.reserve(inputs.size());
    std::vector<BurstRun> burst;
    std::vector<std::size_t> at;  // burst[j] is inputs[at[j]]
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      results.emplace_back(Value{});
      if (Result<void> ok = check_run_input(*inputs[i]); !ok) {
        results[i] = ok.error();
        continue;
      }
      burst.push_back(BurstRun{inputs[i], hosts[i]});
      at.push_back(i);
    }
    if (burst.empty()) return results;
    const RunInput& first = *burst.front().input;
    const PoolKey key{std::string(first.principal), first.limits.memory_bytes, first.allow_jit};
    const bool shared = std::all_of(burst.begin(), burst.end(), [&](const BurstRun& r) {
      return r.input->principal == first.principal && r.input->limits.memory_bytes == key.memory_bytes &&
             r.input->allow_jit == key.allow_jit && r.input->abort == first.abort;
    });
    std::size_t done = 0;
    if (shared && burst.size() > 1 && pool_.enabled() && !first.principal.empty()) {
      // The guest's CPU-time rlimit, a backstop behind each run's own wall-clock kill, covers
      // the burst's budgets together.
      Limits all = first.limits;
      all.wall_ms = 0;
      for (const BurstRun& r : burst) all.wall_ms += r.input->limits.wall_ms + options_.kill_grace_ms;
      std::optional<WarmGuest> warm = take_armed(key, all);
      if (warm) {
        bool reusable = false;
        const auto started = std::chrono::steady_clock::now();
        done = run_burst_in_warm_guest(*warm, burst, options_.kill_grace_ms, counters_, reusable);
        reusable = reusable && resident_fit_after_run(*warm, micros_since(started), pool_.options().max_resident_bytes);
        if (reusable) {
          pool_.give_back(key, std::move(*warm));
        } else {
          discard_guest(*warm);
          pool_.lost(key);
        }
        bursts_.fetch_add(1, std::memory_order_relaxed);
        burst_runs_.fetch_add(done, std::memory_order_relaxed);
      }
    }
    for (std::size_t j = 0; j < done; ++j) results[at[j]] = std::move(burst[j].outcome);
    // The rest (past the burst, or never started in it) one by one, each in a guest of its own turn.
    for (std::size_t j = done; j < burst.size(); ++j) results[at[j]] = run(*burst[j].input, burst[j].host);
    return results;
  }

  // An idle warm guest of `key` whose CPU limit is armed for `limits`, else one forked for it
  // (one in use of the key either way, until given back or lost); none when no guest could be had.
  std::optional<WarmGuest> take_armed(const PoolKey& key, const Limits& limits) {
    std::optional<WarmGuest> warm = pool_.take(key);
    while (warm && !arm_cpu_limit(*warm, limits)) {
      discard_guest(*warm);
      pool_.lost(key);
      warm = pool_.take(key);
    }
    if (warm) return warm;
    Result<WarmGuest> fresh = spawn_warm(key);
    if (!fresh) fresh = spawn_warm(key);
    if (!fresh || !arm_cpu_limit(*fresh, limits)) {
      if (fresh) discard_guest(*fresh);
      pool_.lost(key);
      return std::nullopt;
    }
    return std::move(*fresh);
  }

  // Runs the request in `warm` (taken for `key`, its CPU limit armed) and gives it back, or
  // discards it when it is not fit for another run.
  Result<std::vector<std::uint8_t>> finish_in_warm_guest(const PoolKey& key, WarmGuest& warm_guest, const RunInput& input,
                                                         const std::vector<std::uint8_t>& request, channel::Kind done,
                                                         HostCalls* host, const SessionOptions& session) {
    WarmGuest* warm = &warm_guest;
    bool reusable = false;
    const auto started = std::chrono::steady_clock::now();
    Result<std::vector<std::uint8_t>> result =
        run_in_warm_guest(*warm, input, request, done, host, session, counters_, reusable);
    if (session.direct != nullptr) session.direct->mark("answer_read");  // the trace's
    reusable = reusable && resident_fit_after_run(*warm, micros_since(started), pool_.options().max_resident_bytes);
    if (reusable) {
      pool_.give_back(key, std::move(*warm));
    } else {
      // Killed by a limit, crashed, or wrote ahead: never reused; its place is refilled.
      discard_guest(*warm);
      if (session.direct != nullptr) session.direct->mark("guest_discarded");
      pool_.lost(key);
    }
    if (session.direct != nullptr) session.direct->mark("guest_released");
    return result;
  }

  ProcessJailStatus status() const override {
    std::lock_guard lock(mutex_);
    ProcessJailStatus s;
    s.guest_path = guest_path_;
    if (zygote_) {
      s.zygote_pid = zygote_->pid();
      s.namespaces = namespace_names(zygote_->hello().namespaces);
      s.namespace_fallback = zygote_->hello().fallback;
    }
    s.guests_started = counters_.guests_started.load();
    s.guests_killed = counters_.guests_killed.load();
    s.zygote_starts = zygote_starts_;
    s.guests_reused = reused_.load();
    s.bursts = bursts_.load();
    s.burst_runs = burst_runs_.load();
    s.guests_warm = pool_.idle();
    s.guests_refilled = pool_.refilled();
    s.strong_pages_direct = pages_direct_.load();
    s.strong_pages_by_channel = pages_by_channel_.load();
    return s;
  }

  std::string describe() const override {
    const ProcessJailStatus s = status();
    return "guest " + s.guest_path + ", zygote " + std::to_string(s.zygote_pid) +
           ", namespaces: " + (s.namespaces.empty() ? "none" : s.namespaces) +
           (s.namespace_fallback.empty() ? "" : "; " + s.namespace_fallback);
  }

 private:
  ProcessJailOptions options_;
  std::string guest_path_;
  mutable std::mutex mutex_;
  std::shared_ptr<ZygoteLink> zygote_;
  std::uint64_t zygote_starts_ = 0;
  SessionCounters counters_;
  std::atomic<std::uint64_t> reused_{0};
  std::atomic<std::uint64_t> bursts_{0};      // bursts run in one guest
  std::atomic<std::uint64_t> burst_runs_{0};  // runs answered in them
  std::atomic<std::uint64_t> pages_direct_{0};
  std::atomic<std::uint64_t> pages_by_channel_{0};
  GuestPool pool_;  // last: its refill thread stops before the rest goes
};

}  // namespace

Result<std::unique_ptr<ProcessJail>> ProcessJail::start(const ProcessJailOptions& options) {
  Result<std::string> path = find_guest_binary(options.guest_path);
  if (!path) return path.error();
  auto jail = std::make_unique<ZygoteJail>(options, *path);
  if (Result<void> started = jail->start_zygote(); !started) return started.error();
  return std::unique_ptr<ProcessJail>(std::move(jail));
}

}  // namespace sojourn::sandbox
