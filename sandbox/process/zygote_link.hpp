// The host's end of one zygote: starts the guest binary in zygote mode, asks it for
// guests, and collects how each one ended (a reader thread demultiplexes the reports).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "sandbox/process/guest_wire.hpp"
#include "sandbox/process/unique_fd.hpp"
#include "sojourn/core/error.hpp"

namespace sojourn::sandbox {

struct SpawnedGuest {
  std::uint64_t id = 0;
  int pid = 0;
  UniqueFd pidfd;  // to kill it without racing pid reuse
};

class ZygoteLink {
 public:
  // Starts `guest_path --zygote` and waits for its hello. Errors: jail_unavailable.
  static Result<std::shared_ptr<ZygoteLink>> start(const std::string& guest_path, bool namespaces);
  ~ZygoteLink();
  ZygoteLink(const ZygoteLink&) = delete;
  ZygoteLink& operator=(const ZygoteLink&) = delete;

  // Forks a guest whose channel is `guest_end` (sent to the zygote, then closed here).
  Result<SpawnedGuest> spawn(const Limits& limits, bool allow_jit, UniqueFd guest_end);
  // How guest `id` ended, once the zygote reported it; nullopt after `until` or when the
  // zygote died first. Forgets the guest either way.
  std::optional<channel::Exited> wait_exit(std::uint64_t id, std::chrono::steady_clock::time_point until);
  // Drops the guest's entry (its exit report, when it comes, is ignored).
  void forget(std::uint64_t id);

  bool alive() const;
  int pid() const noexcept { return pid_; }
  const channel::Hello& hello() const noexcept { return hello_; }

 private:
  ZygoteLink(UniqueFd control, int pid, channel::Hello hello);
  void read_reports();

  struct Pending {
    std::optional<channel::Spawned> spawned;
    UniqueFd pidfd;
    bool pidfd_lost = false;  // attached, but this process had no descriptor free for it
    std::optional<channel::Exited> exited;
  };

  UniqueFd control_;
  int pid_;
  channel::Hello hello_;
  mutable std::mutex mutex_;
  std::mutex send_mutex_;
  std::condition_variable changed_;
  std::map<std::uint64_t, Pending> pending_;
  std::uint64_t next_id_ = 1;
  bool dead_ = false;
  std::thread reader_;
};

}  // namespace sojourn::sandbox
