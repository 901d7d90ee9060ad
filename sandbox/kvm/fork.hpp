// Fast start: a master VM runs the guest's initialisation once, up to its first read on the
// channel, and is frozen (memory, registers, monitor state); each MicroVmFork is a new VM whose
// memory is a copy-on-write view of the master's memfd, with the master's registers, that
// serves one request and can be reset to pristine for reuse by the same owner.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "sandbox/kvm/fork_secrets.hpp"
#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/initial_stack.hpp"
#include "sandbox/kvm/syscall_table.hpp"
#include "sandbox/kvm/vcpu.hpp"
#include "sandbox/kvm/vm.hpp"

namespace sojourn::sandbox::kvm {

// What the master leaves behind: never written again, shared by its forks (which keep it alive).
struct MasterImage {
  GuestMemory memory;  // MAP_SHARED; the forks map the same memfd MAP_PRIVATE
  GuestState state;    // brk, regions, page tables' pool, FS base, ...
  VcpuSnapshot vcpu;   // paused at the syscall exit of its first channel read
  std::vector<kvm_cpuid_entry2> cpuid;
};

class MicroVmFork;

// A VM (no memory yet) and its vCPU with the master's CPUID: made ahead of a fork, or kept
// from a fork that is done, so that a fork need not wait for KVM_CREATE_VM.
struct VmShell {
  Vm vm;
  Vcpu vcpu;
};

// Not thread-safe: one owner forks, prewarms and recycles.
class MasterVm {
 public:
  // Boots `elf` in a fresh VM of `memory_bytes` and runs it (under `budget_ms`) until it reads
  // its channel for the first time, then snapshots it; the master's VM and vCPU are closed.
  static Result<MasterVm> boot(const KvmSystem& system, std::span<const std::byte> elf, const StackInputs& stack,
                               std::uint64_t memory_bytes, std::uint64_t budget_ms);
  // A VM and vCPU (from the pool, else new) over a copy-on-write view of the master's memory,
  // with its registers.
  Result<MicroVmFork> fork(const KvmSystem& system);
  // Makes VMs for the pool until it holds `count` (ahead of demand, e.g. while idle).
  Result<void> prewarm(const KvmSystem& system, std::size_t count);
  // Keeps a fork's VM and vCPU for the next fork (its memory is dropped).
  Result<void> recycle(MicroVmFork fork);
  std::size_t pooled() const noexcept { return pool_.size(); }
  // Each fork (and each reset) gets its own stack-protector canary and AT_RANDOM bytes
  // (fork_secrets.hpp); on by default. Off, a fork starts byte for byte as the master.
  void set_fork_reseeding(bool on) noexcept { reseed_ = on; }

  const GuestMemory& memory() const noexcept { return image_->memory; }
  const GuestState& state() const noexcept { return image_->state; }

 private:
  explicit MasterVm(std::shared_ptr<const MasterImage> image) : image_(std::move(image)) {}
  Result<VmShell> make_shell(const KvmSystem& system) const;

  std::shared_ptr<const MasterImage> image_;
  std::vector<VmShell> pool_;
  bool reseed_ = true;
};

class MicroVmFork {
 public:
  // Emulates the master's pending channel read (the request comes from `channel`), then runs
  // the guest until exit_group (its status) or a fatal exit (its error). Once per reset.
  Result<int> serve(ChannelEnd& channel, std::uint64_t budget_ms);
  // From any thread: ends serve() at once, as its budget would (Vcpu::force_exit).
  void force_exit() { vcpu_.force_exit(); }
  // Drops every page this fork wrote and loads the master's registers and state again; the
  // VM and vCPU file descriptors are kept (no KVM_CREATE_VM).
  Result<void> reset();

  // The monitor's accessors, for the owner (and the tests' raw writes).
  GuestMemory& memory() noexcept { return memory_; }
  GuestState& state() noexcept { return state_; }
  VcpuState vcpu_state() const noexcept { return vcpu_.state(); }
  // The canary rewrite of the last fork or reset (all zero when reseeding is off).
  const ReseedReport& secrets() const noexcept { return secrets_; }

 private:
  friend class MasterVm;
  MicroVmFork(std::shared_ptr<const MasterImage> image, GuestMemory memory, Vm vm, Vcpu vcpu)
      : image_(std::move(image)), memory_(std::move(memory)), state_(image_->state), vm_(std::move(vm)),
        vcpu_(std::move(vcpu)) {}

  Result<void> reseed();

  std::shared_ptr<const MasterImage> image_;
  GuestMemory memory_;  // declared before the VM: the VM's slot points into it
  GuestState state_;
  Vm vm_;
  Vcpu vcpu_;
  bool reseed_ = false;
  ReseedReport secrets_;
};

}  // namespace sojourn::sandbox::kvm
