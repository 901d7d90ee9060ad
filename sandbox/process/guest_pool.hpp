// Warm guests for the process jail: guests that answered a run cleanly wait here, by
// principal, for that principal's next run, and a background thread keeps each principal's
// pool filled. A guest never serves two principals. See docs/jails.md, "Warm guests".
#pragma once

#include <compare>
#include <condition_variable>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "sandbox/process/zygote_link.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn::sandbox {

// What a warm guest is bound to: who its code runs for, and what its jail set-up fixed at
// the fork (the arena's size and the heap limits follow the memory quota; the filter, the JIT).
struct PoolKey {
  std::string principal;
  std::uint64_t memory_bytes = 0;
  bool allow_jit = false;
  auto operator<=>(const PoolKey&) const = default;
};

// A live guest with its channel, between runs.
struct WarmGuest {
  std::shared_ptr<ZygoteLink> zygote;  // the guest dies with it
  SpawnedGuest guest;
  UniqueFd channel;     // the host's end
  // Its channel waits in a timed recv (prepare_timed_receive, once at watch_guest); else, where
  // the kernel refused that, a non-blocking descriptor and poll.
  bool timed_receive = false;
  UniqueFd stat;        // its /proc/PID/stat, opened while it was known alive
  UniqueFd statm;       // its /proc/PID/statm, likewise
  std::uint64_t runs = 0;  // runs it answered
  // Its CPU time at its last answer, or at its last run's start when the host did not read it
  // after (0: at its fork).
  std::uint64_t settled_cpu_us = 0;
  // Its process CPU clock (clock_getcpuclockid once, at watch_guest: that call costs a syscall
  // of its own to check the pid), valid while the guest's pidfd holds it alive.
  int cpu_clock = 0;
  bool has_cpu_clock = false;
  // Its CPU time when guest_at_rest last found it fit (the start of the run it was taken for).
  std::optional<std::uint64_t> rest_cpu_us;
  // Its CPU time at (or before) its resident memory was last read and found within the
  // pool's cap; nullopt: never read (see resident_fit).
  std::optional<std::uint64_t> resident_checked_cpu_us;
  // The RLIMIT_CPU values the host last saw and set (0: not yet known / none armed). The
  // guest sets its hard limit once before its filter (which refuses prlimit and setrlimit),
  // and only the host moves the soft limit after that: a run whose budget ends at the same
  // whole second as the last one's needs no prlimit call.
  std::uint64_t hard_cpu_seconds = 0;
  std::uint64_t armed_soft_seconds = 0;
  // Carried reads learned from its runs (guest_session_warm.cpp, docs/jails.md): per chunk
  // source, the calls to carried services its last run of it made, to read ahead next time.
  // This guest's alone (one principal's), so what its own word taught changes only its runs.
  struct LearnedReads {
    std::string source;
    std::vector<std::pair<std::string, Value>> calls;
    std::vector<std::string> encoded_args;  // calls[i]'s args in core's Value encoding
  };
  std::vector<LearnedReads> learned;
};

// Ends a guest that will not run again: killed, and its exit report ignored.
void discard_guest(WarmGuest& guest);

// Opens the guest's /proc/PID/stat and statm (right after the spawn, while its pidfd holds it
// alive).
void watch_guest(WarmGuest& guest);
// The guest's resident memory (RSS, from statm), or nullopt when it is gone.
std::optional<std::uint64_t> resident_bytes(const WarmGuest& guest);
// How much CPU time (or, right after a run, wall-clock time) a guest may have spent since its
// resident memory was last read before it is read again. Memory becomes resident only when
// the guest touches a new page, and each such fault (the kernel zeroing the page) is charged
// to the guest's own CPU clock: within this budget a guest can grow by a few MB at most, far
// below the pool's cap, so statm (a read the kernel formats) is read once every many short
// runs rather than after each.
inline constexpr std::uint64_t kResidentCheckUs = 250;
// Whether the guest's resident memory is within `max_resident_bytes` (read from statm), or
// may be taken as such: it was read, and found within, less than kResidentCheckUs of the
// guest's CPU time before `cpu_us`, a reading of its clock (nullopt: unknown, read now).
// Records the reading's CPU time when it reads.
bool resident_fit(WarmGuest& guest, std::optional<std::uint64_t> cpu_us, std::uint64_t max_resident_bytes);
// After a run of `run_us` microseconds of wall-clock time (from the host's request to the
// guest's answer, so at least the guest's CPU time in it): whether it may go back to the pool
// as far as its resident memory goes. A run over kResidentCheckUs has statm read at once (a
// run that grew the guest past the cap is not kept); a shorter one is left to the CPU-time
// check at the guest's next take (guest_at_rest), which also sees what it did after its answer.
bool resident_fit_after_run(WarmGuest& guest, std::uint64_t run_us, std::uint64_t max_resident_bytes);
// Waits, at most `limit`, for a guest that has answered to leave its CPU (asleep in its next
// read, or gone). The kernel adds a task's current slice to its process CPU clock only when
// the task leaves the CPU or at a scheduler tick, so read from another CPU while the guest is
// still on its own (answered, resetting, not yet blocked), the clock can miss the whole run:
// a guest that ran its step in one slice would read as having used no CPU. The caller reads
// the clock after this. False when the guest was still running at `limit`.
bool wait_off_cpu(const WarmGuest& guest, std::chrono::microseconds limit);
// Whether a guest between runs is fit for another: its zygote and itself alive, nothing
// unread on its channel (no end-of-file, nothing written ahead of a request), and asleep
// waiting for a request or still within the CPU time a reset takes (one that keeps running
// after its answer is not at rest).
// Its CPU time then is kept in rest_cpu_us (the next run's start, read once). Its resident
// memory is checked against `max_resident_bytes` when it used kResidentCheckUs of CPU time
// since it was last read (resident_fit).
bool guest_at_rest(WarmGuest& guest, std::uint64_t max_resident_bytes = UINT64_MAX);

struct GuestPoolOptions {
  // Guests kept for each key, in use or idle (a refill tops the key up to this many); more
  // may run at once, but at most this many wait idle. 0: no pool.
  std::size_t per_principal = 4;
  std::size_t max_idle = 32;      // idle guests in all; the least recently used go first
  // A guest whose run left it larger than this (resident) is not kept: its arena's pages
  // stay resident (zeroed) while it waits, and idle guests should cost little memory.
  std::uint64_t max_resident_bytes = 32u << 20;
};

class GuestPool {
 public:
  // Makes a fresh guest for a key (on the refill thread).
  using Spawner = std::function<Result<WarmGuest>(const PoolKey&)>;
  GuestPool(GuestPoolOptions options, Spawner spawner);
  ~GuestPool();  // stops the refill thread and discards every idle guest
  GuestPool(const GuestPool&) = delete;
  GuestPool& operator=(const GuestPool&) = delete;

  bool enabled() const noexcept { return options_.per_principal > 0; }
  const GuestPoolOptions& options() const noexcept { return options_; }
  // An idle guest of `key` at rest (others found on the way are discarded), or none, when the
  // caller forks one: either way one guest of the key is in use from now on (until give_back
  // or lost), and the key's pool is refilled in the background. With no pool: none, untracked.
  std::optional<WarmGuest> take(const PoolKey& key);
  // A guest in use that answered its run cleanly waits for the key's next run (or is
  // discarded when the key's idle guests or the whole pool are at their cap).
  void give_back(const PoolKey& key, WarmGuest guest, bool was_in_use = true);
  // A guest of `key` in use was discarded: its place is refilled.
  void lost(const PoolKey& key);
  // Discards every idle guest (a new zygote, or shutting down).
  void clear();

  std::size_t idle() const;
  std::uint64_t refilled() const;

 private:
  struct Idle {
    WarmGuest guest;
    std::uint64_t stamp;  // when it was given back, for eviction
  };
  void in_use(const PoolKey& key);
  void want_refill(const PoolKey& key);  // with mutex_ held
  void returned(const PoolKey& key);     // with mutex_ held
  void refill_loop();
  std::size_t idle_locked() const;
  std::size_t guests_locked(const PoolKey& key) const;  // idle, being forked, and in use

  GuestPoolOptions options_;
  Spawner spawner_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::map<PoolKey, std::deque<Idle>> idle_;
  std::map<PoolKey, std::size_t> spawning_;
  std::map<PoolKey, std::size_t> busy_;  // taken or forked for a run, not back yet
  std::deque<PoolKey> refills_;
  std::uint64_t clock_ = 0;
  std::uint64_t refilled_ = 0;
  bool stopping_ = false;
  std::thread refiller_;
};

}  // namespace sojourn::sandbox
