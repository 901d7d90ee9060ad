// The `process` isolation level: each run in its own forked guest process (the static
// sojourn-guest binary), jailed by namespaces, rlimits and a seccomp allow-list, killed by
// the host when it passes its budget. See docs/jails.md.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"
#include "sojourn/sandbox/jail.hpp"

namespace sojourn::sandbox {

struct ProcessJailOptions {
  // The sojourn-guest executable. Empty: $SOJOURN_GUEST, then beside the running
  // executable, then ../libexec/sojourn/ from it, then the install's libexec directory,
  // then the build tree.
  std::string guest_path;
  // New user/net/mount/pid/ipc namespaces for each guest where the kernel allows them.
  bool namespaces = true;
  // How long after its wall-clock deadline a guest that did not stop itself is killed
  // (a C function such as a backtracking string.find never sees the Lua hook).
  std::uint32_t kill_grace_ms = 50;
  // Warm guests (docs/jails.md): guests kept for each principal, busy or idle (0: every run
  // forks a guest of its own), and at most this many idle in all.
  std::uint32_t warm_guests = 4;
  std::uint32_t max_warm_guests = 32;
  // Strong steps: the host reads a stopped guest's kept pages out of its arena and writes a
  // resumed one's into it (process_vm_readv/writev) instead of passing them through the
  // channel; when the kernel refuses that, or with false, they go through the channel.
  bool direct_pages = true;
};

// What the jail is doing, for `sojourn ps`, logs and tests.
struct ProcessJailStatus {
  std::string guest_path;
  int zygote_pid = 0;
  std::string namespaces;        // e.g. "user net(shared) mount pid ipc"; "" when none
  std::string namespace_fallback;  // why some are missing, "" when none is
  std::uint64_t guests_started = 0;
  std::uint64_t guests_killed = 0;   // by the host: deadline, abort, oversized output
  std::uint64_t zygote_starts = 0;   // 1 + restarts after the zygote died
  std::uint64_t guests_reused = 0;   // runs served by a warm guest (no fork on their path)
  std::uint64_t bursts = 0;          // run_burst's bursts served in one guest
  std::uint64_t burst_runs = 0;      // runs those bursts answered (or ended at)
  std::uint64_t guests_warm = 0;     // idle warm guests now
  std::uint64_t guests_refilled = 0; // warm guests forked off the request path
  // A strong step's kept pages, each stop and resume: moved through the guest's memory, or
  // through its channel (direct_pages off, or refused by the kernel).
  std::uint64_t strong_pages_direct = 0;
  std::uint64_t strong_pages_by_channel = 0;
};

class ProcessJail : public Jail {
 public:
  // Finds the guest binary and starts the zygote. Errors: jail_unavailable.
  static Result<std::unique_ptr<ProcessJail>> start(const ProcessJailOptions& options);

  Isolation level() const final { return Isolation::process; }

  // run: one chunk in a guest: a warm one of input.principal's when one is idle, else one
  // forked for the run (see docs/jails.md, "Warm guests"; an empty principal's guest is
  // never reused), with the same results and errors as run_lua, plus:
  //   seccomp_kill   "guest killed by seccomp: syscall N"
  //   guest_crashed  "guest crashed: ..." (a signal or an exit without an answer)
  //   jail_unavailable "process jail unavailable: ..." (the zygote cannot be restarted)
  //   internal       "internal error: socketpair: Too many open files" or "internal error: a
  //                  guest's pidfd could not be received: Too many open files (the node is at
  //                  its RLIMIT_NOFILE)": each running guest holds two of the node's descriptors
  // A guest past its deadline is killed: deadline "wall-clock deadline of N ms exceeded";
  // past its CPU-time rlimit: cpu_limit "CPU limit of N instructions exceeded"; output past
  // the memory limit: memory_limit "memory limit of N bytes exceeded".
  // run_agent: one agent step in a fresh guest: the same outcome and errors as
  // sandbox::run_agent, plus the jail's errors above. agent.* host calls cross the channel
  // like node.call's.

  // run, only where it costs no wait: in an idle warm guest of input.principal whose limits
  // are set, with `kill_grace_ms` in place of the jail's after the deadline. nullopt, at
  // once, when there is none (no fork here: the caller runs it some other way; a refill is
  // asked for). The same results and errors as run otherwise.
  virtual std::optional<Result<Value>> run_if_warm(const RunInput& input, HostCalls* host,
                                                   std::uint32_t kill_grace_ms) = 0;
  // Plain runs in one warm guest at once (docs/jails.md, "Bursts"), when they share a
  // principal, a memory limit and the JIT choice: their requests go in one write and the guest
  // answers each in turn, each run keeping its own limits, host calls, result or error. A run
  // the guest did not get to because an earlier one ended it (a kill at a limit, a crash) is
  // run again by itself, in another guest: it had no effect. Runs that do not share those
  // (or with no pool) run one by one. results[i] is what run(*inputs[i], hosts[i]) would answer.
  virtual std::vector<Result<Value>> run_burst(std::span<const RunInput* const> inputs,
                                               std::span<HostCalls* const> hosts) = 0;
  virtual ProcessJailStatus status() const = 0;
};

// Where the guest binary is (see ProcessJailOptions::guest_path), or jail_unavailable.
Result<std::string> find_guest_binary(const std::string& explicit_path);

}  // namespace sojourn::sandbox
