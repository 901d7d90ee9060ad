// The warm-guest pool: idle guests by key, checked at rest before reuse, and one refill
// thread that forks replacements off the request path.
#include "sandbox/process/guest_pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <string_view>
#include <vector>

#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/host_channel.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn::sandbox {

void discard_guest(WarmGuest& guest) {
  if (guest.guest.pidfd.valid()) ::syscall(SYS_pidfd_send_signal, guest.guest.pidfd.get(), SIGKILL, nullptr, 0);
  if (guest.zygote) guest.zygote->forget(guest.guest.id);
  guest.channel.reset();
  guest.stat.reset();
  guest.statm.reset();
  guest.guest.pidfd.reset();
  guest.zygote.reset();
}

namespace {

// The CPU time a guest may spend after its answer (or from its fork) before it waits for the
// next request: resetting its arena, or its jail set-up. One that spent more is spinning.
constexpr std::uint64_t kSettleCpuUs = 50'000;

// The fields of /proc/PID/stat after the process name, from the state on ("S 1 2 ..."); empty
// when the process is gone. The name may hold parentheses: the fields follow the last ')'.
std::string stat_fields(int stat_fd) {
  char buffer[1024];
  const ssize_t n = ::pread(stat_fd, buffer, sizeof buffer, 0);
  if (n <= 0) return {};
  const std::string_view stat(buffer, static_cast<std::size_t>(n));
  const std::size_t close = stat.rfind(')');
  if (close == std::string_view::npos || close + 2 >= stat.size()) return {};
  return std::string(stat.substr(close + 2));
}

// The process state letter ('S' asleep, 'R' running, ...), or 0.
char process_state(int stat_fd) {
  const std::string fields = stat_fields(stat_fd);
  return fields.empty() ? '\0' : fields[0];
}

}  // namespace

void watch_guest(WarmGuest& guest) {
  const std::string proc = "/proc/" + std::to_string(guest.guest.pid);
  guest.stat = UniqueFd(::open((proc + "/stat").c_str(), O_RDONLY | O_CLOEXEC));
  guest.statm = UniqueFd(::open((proc + "/statm").c_str(), O_RDONLY | O_CLOEXEC));
  clockid_t clock{};
  guest.has_cpu_clock = ::clock_getcpuclockid(guest.guest.pid, &clock) == 0;
  guest.cpu_clock = static_cast<int>(clock);
  // Its channel is set up once for its life: each run's HostChannel then waits for the guest's
  // frames in the recv itself (no poll before each), and makes no fcntl call of its own.
  if (guest.channel.valid()) {
    guest.timed_receive = prepare_timed_receive(guest.channel.get());
    if (!guest.timed_receive) ::fcntl(guest.channel.get(), F_SETFL, ::fcntl(guest.channel.get(), F_GETFL) | O_NONBLOCK);
  }
}

std::optional<std::uint64_t> resident_bytes(const WarmGuest& guest) {
  // statm, not stat: the kernel formats stat's fifty fields (and walks the process for some)
  // on every read, which took a fifth of the node's CPU when read twice per warm run; statm
  // is seven counters. Its second field is the resident pages, stat's rss.
  if (!guest.statm.valid()) return std::nullopt;
  char buffer[256];
  const ssize_t n = ::pread(guest.statm.get(), buffer, sizeof buffer - 1, 0);
  if (n <= 0) return std::nullopt;
  buffer[n] = '\0';
  char* after_size = nullptr;
  (void)std::strtoull(buffer, &after_size, 10);
  if (after_size == buffer || *after_size != ' ') return std::nullopt;
  char* after_resident = nullptr;
  const std::uint64_t pages = std::strtoull(after_size + 1, &after_resident, 10);
  if (after_resident == after_size + 1) return std::nullopt;
  return pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

bool resident_fit(WarmGuest& guest, std::optional<std::uint64_t> cpu_us, std::uint64_t max_resident_bytes) {
  if (cpu_us && guest.resident_checked_cpu_us && *cpu_us >= *guest.resident_checked_cpu_us &&
      *cpu_us - *guest.resident_checked_cpu_us < kResidentCheckUs) {
    return true;
  }
  const std::optional<std::uint64_t> resident = resident_bytes(guest);
  if (!resident || *resident > max_resident_bytes) return false;
  // Read after `cpu_us` was: counting from it only makes the next reading come sooner.
  guest.resident_checked_cpu_us = cpu_us;
  return true;
}

bool resident_fit_after_run(WarmGuest& guest, std::uint64_t run_us, std::uint64_t max_resident_bytes) {
  if (run_us < kResidentCheckUs && guest.resident_checked_cpu_us) return true;
  if (!resident_fit(guest, std::nullopt, max_resident_bytes)) return false;
  // Counted from the guest's clock at the run's start (or at its answer, where the host read
  // it then): a reading before this one, so the next check comes sooner, never later.
  guest.resident_checked_cpu_us = guest.settled_cpu_us;
  return true;
}

bool wait_off_cpu(const WarmGuest& guest, std::chrono::microseconds limit) {
  if (!guest.stat.valid()) return false;
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    // 'R' is running or runnable; only a runnable task that was preempted has its clock up to
    // date, and the state does not say which: wait for any other state (or none: gone).
    if (process_state(guest.stat.get()) != 'R') return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::yield();  // on one CPU, lets the guest run to its read
  }
}

bool guest_at_rest(WarmGuest& guest, std::uint64_t max_resident_bytes) {
  guest.rest_cpu_us.reset();
  if (!guest.stat.valid()) return false;
  if (!guest.zygote || !guest.zygote->alive() || !guest.channel.valid() || !guest.guest.pidfd.valid()) return false;
  // The pidfd is readable once the guest exited; the channel once it wrote or closed.
  pollfd fds[2] = {{guest.guest.pidfd.get(), POLLIN, 0}, {guest.channel.get(), POLLIN, 0}};
  if (::poll(fds, 2, 0) != 0) return false;
  // Within the CPU time a reset takes since its answer (or since its last run started, see
  // run_in_warm_guest): asleep waiting for a request, or still
  // finishing its reset (the request waits on the channel until it reads it). Its CPU clock
  // tells with one cheap call; the state in /proc/PID/stat (costly to read, see
  // resident_bytes) is only read past that allowance, where only a guest asleep since is fit:
  // one still running is spinning after its answer.
  std::optional<std::uint64_t> used = guest_cpu_time_us(guest);
  if (!used) return false;
  if (*used - std::min(*used, guest.settled_cpu_us) > kSettleCpuUs) {
    if (process_state(guest.stat.get()) != 'S') return false;
    // Asleep, so off its CPU: read again, as after wait_off_cpu. The reading above may predate
    // the end of its last slice (the kernel adds a slice to the clock when the task leaves
    // its CPU, or at a tick), and this one is the next run's start.
    used = guest_cpu_time_us(guest);
    if (!used) return false;
  }
  if (!resident_fit(guest, used, max_resident_bytes)) return false;
  guest.rest_cpu_us = used;
  return true;
}

GuestPool::GuestPool(GuestPoolOptions options, Spawner spawner)
    : options_(options), spawner_(std::move(spawner)) {
  if (enabled()) refiller_ = std::thread([this] { refill_loop(); });
}

GuestPool::~GuestPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (refiller_.joinable()) refiller_.join();
  clear();
}

std::size_t GuestPool::idle_locked() const {
  std::size_t n = 0;
  for (const auto& [key, guests] : idle_) n += guests.size();
  return n;
}

std::size_t GuestPool::guests_locked(const PoolKey& key) const {
  const auto count = [&key](const auto& map) -> std::size_t {
    const auto it = map.find(key);
    if (it == map.end()) return 0;
    if constexpr (std::is_same_v<std::decay_t<decltype(it->second)>, std::size_t>) {
      return it->second;
    } else {
      return it->second.size();
    }
  };
  return count(idle_) + count(spawning_) + count(busy_);
}

std::size_t GuestPool::idle() const {
  std::lock_guard lock(mutex_);
  return idle_locked();
}

std::uint64_t GuestPool::refilled() const {
  std::lock_guard lock(mutex_);
  return refilled_;
}

void GuestPool::want_refill(const PoolKey& key) {
  if (stopping_) return;
  if (guests_locked(key) >= options_.per_principal) return;
  for (const PoolKey& queued : refills_) {
    if (queued == key) return;
  }
  refills_.push_back(key);
  wake_.notify_one();
}

std::optional<WarmGuest> GuestPool::take(const PoolKey& key) {
  if (!enabled()) return std::nullopt;
  in_use(key);  // a guest from here, or one the caller forks
  for (;;) {
    std::optional<WarmGuest> candidate;
    {
      std::lock_guard lock(mutex_);
      if (auto it = idle_.find(key); it != idle_.end()) {
        // The most recently used first: its pages are the likeliest to be warm.
        candidate = std::move(it->second.back().guest);
        it->second.pop_back();
        if (it->second.empty()) idle_.erase(it);
      }
      want_refill(key);
    }
    if (!candidate) return std::nullopt;
    if (guest_at_rest(*candidate, options_.max_resident_bytes)) return candidate;  // checked unlocked: it reads /proc
    discard_guest(*candidate);
  }
}

void GuestPool::in_use(const PoolKey& key) {
  std::lock_guard lock(mutex_);
  ++busy_[key];
}

void GuestPool::returned(const PoolKey& key) {
  if (auto it = busy_.find(key); it != busy_.end() && --it->second == 0) busy_.erase(it);
}

void GuestPool::give_back(const PoolKey& key, WarmGuest guest, bool was_in_use) {
  std::vector<WarmGuest> evicted;
  {
    std::lock_guard lock(mutex_);
    if (was_in_use) returned(key);
    std::deque<Idle>& guests = idle_[key];
    if (stopping_ || guests.size() >= options_.per_principal) {
      evicted.push_back(std::move(guest));
    } else {
      guests.push_back({std::move(guest), ++clock_});
    }
    // Over the whole pool's cap: the least recently given back goes, whatever its key.
    while (idle_locked() > options_.max_idle) {
      auto oldest = idle_.end();
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if (!it->second.empty() && (oldest == idle_.end() || it->second.front().stamp < oldest->second.front().stamp)) {
          oldest = it;
        }
      }
      evicted.push_back(std::move(oldest->second.front().guest));
      oldest->second.pop_front();
    }
    std::erase_if(idle_, [](const auto& entry) { return entry.second.empty(); });
    want_refill(key);
  }
  for (WarmGuest& old : evicted) discard_guest(old);
}

void GuestPool::lost(const PoolKey& key) {
  if (!enabled()) return;
  std::lock_guard lock(mutex_);
  returned(key);
  want_refill(key);
}

void GuestPool::clear() {
  std::map<PoolKey, std::deque<Idle>> all;
  {
    std::lock_guard lock(mutex_);
    all.swap(idle_);
  }
  for (auto& [key, guests] : all) {
    for (Idle& idle : guests) discard_guest(idle.guest);
  }
}

void GuestPool::refill_loop() {
  // A refill is wanted as a run ends (a strong step's spent guest, above all): woken then, this
  // thread would preempt the thread that ended the run, on the run's path (a strong hop's source
  // waited ~0.5 ms for it). As a batch thread it is not woken ahead of a running thread; it
  // still gets its fair share of the CPU. A zygote this thread restarts is started with the
  // node's main thread's policy (ZygoteLink::start), so no guest inherits this one. (A hint:
  // should the kernel refuse it, as before.)
  const sched_param batch{};
  (void)::sched_setscheduler(0, SCHED_BATCH, &batch);
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stopping_ || !refills_.empty(); });
    if (stopping_) return;
    PoolKey key = std::move(refills_.front());
    refills_.pop_front();
    if (guests_locked(key) >= options_.per_principal || idle_locked() >= options_.max_idle) continue;
    ++spawning_[key];
    lock.unlock();
    Result<WarmGuest> guest = spawner_(key);
    lock.lock();
    if (--spawning_[key] == 0) spawning_.erase(key);
    if (!guest) {
      // Not retried here: the next run of the key forks its own guest and asks again.
      log_warn("process jail", "cannot start a warm guest: " + guest.error().message);
      continue;
    }
    ++refilled_;
    lock.unlock();
    give_back(key, std::move(*guest), /*was_in_use=*/false);
    lock.lock();
  }
}

}  // namespace sojourn::sandbox
