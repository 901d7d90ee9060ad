// The thin KVM layer, vCPU side: create the vCPU, load its registers from the pure modules'
// values, and run it: KVM_RUN, handle_exit, ExitDispatcher, repeat, under a wall-clock budget
// enforced by a timer thread that sets immediate_exit and kicks the vCPU thread with a signal.
#pragma once

#include <linux/kvm.h>

#include <csignal>
#include <cstdint>
#include <memory>
#include <optional>

#include <span>

#include "sandbox/kvm/boot.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/long_mode.hpp"
#include "sandbox/kvm/vcpu_snapshot.hpp"
#include "sandbox/kvm/vcpu_state.hpp"
#include "sandbox/kvm/vm.hpp"

namespace sojourn::sandbox::kvm {

// The signal the budget timer sends to kick a vCPU thread out of KVM_RUN.
inline constexpr int kKickSignal = SIGUSR2;
// Installs its handler (which does nothing) once per process; the run loop calls it too. A
// thread about to install the monitor's seccomp filter calls it first (no rt_sigaction after).
void prepare_kick_signal();

// Maps kvm_run; unmaps it once.
class RunPage {
 public:
  RunPage() = default;
  RunPage(kvm_run* run, std::size_t size) noexcept : run_(run), size_(size) {}
  RunPage(RunPage&& other) noexcept : run_(other.run_), size_(other.size_) { other.run_ = nullptr; }
  RunPage& operator=(RunPage&&) = delete;
  RunPage(const RunPage&) = delete;
  ~RunPage();
  kvm_run* get() const noexcept { return run_; }

 private:
  kvm_run* run_ = nullptr;
  std::size_t size_ = 0;
};

class Vcpu {
 public:
  static Result<Vcpu> create(const KvmSystem& system, const Vm& vm);

  // CPUID as KVM supports it, long-mode sregs, RIP/RSP/RFLAGS, MSRs, XCR0.
  Result<void> set_up(const KvmSystem& system, const BootRegisters& boot, std::uint64_t fs_base);
  // KVM_SET_CPUID2 once, before the first KVM_RUN (a fork: its master's leaves).
  Result<void> set_cpuid(std::span<const kvm_cpuid_entry2> leaves);

  // vcpu_snapshot.cpp: a paused master's registers, and a fork's vCPU loaded with them (the
  // state machine starts over as created). CPUID is not part of it: set_cpuid first.
  Result<VcpuSnapshot> snapshot() const;
  Result<void> restore(const VcpuSnapshot& snapshot);
  Result<void> set_regs(const kvm_regs& regs);

  // Runs until exit_group (its status) or a fatal exit (its error), or the budget runs out
  // (Cause::budget). The state machine ends in finished either way.
  Result<int> run(ExitDispatcher& dispatcher, GuestState& state, std::uint64_t budget_ms);
  // From any thread: ends the current run (or the next one, if none is running yet) as its
  // budget would, at once: the owner's way to force out a guest it has given up on. restore()
  // clears a request that no run consumed.
  void force_exit();
  // A master: runs until the dispatcher pauses it (pause_at_channel_read); the state machine
  // ends in paused. Exiting before that is a Cause::master error.
  Result<void> run_to_pause(ExitDispatcher& dispatcher, GuestState& state, std::uint64_t budget_ms);

  VcpuState state() const noexcept { return machine_.state(); }

 private:
  struct ForcedExit;  // vcpu.cpp: the running budget timer, and a request made before it started
  void clear_forced_exit();
  Vcpu(UniqueFd fd, RunPage run);
  Result<void> set_segment_bases(const GuestState& state);
  Result<void> set_msrs(std::span<const MsrValue> msrs);
  Result<std::optional<int>> finish(Result<int> result);
  // The run loop: exit_group's status, or nullopt when the dispatcher paused it.
  Result<std::optional<int>> run_loop(ExitDispatcher& dispatcher, GuestState& state, std::uint64_t budget_ms);

  UniqueFd fd_;
  RunPage run_;
  VcpuStateMachine machine_;
  std::shared_ptr<ForcedExit> forced_;  // shared_ptr: Vcpu stays movable, ForcedExit stays opaque
};

}  // namespace sojourn::sandbox::kvm
