// The master VM's boot-and-freeze and its copy-on-write forks.
#include "sandbox/kvm/fork.hpp"

#include <optional>
#include <string>

#include "sandbox/kvm/boot.hpp"
#include "sandbox/kvm/entry_stub.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
// The entry stub's syscall exit: `out 0x5c, al` (2 bytes), then `sysretq`.
constexpr std::uint64_t kSyscallOut = kStubAddress + kSyscallEntryOffset;
constexpr std::uint64_t kSyscallReturn = kSyscallOut + 2;
}  // namespace

Result<MasterVm> MasterVm::boot(const KvmSystem& system, std::span<const std::byte> elf, const StackInputs& stack,
                                std::uint64_t memory_bytes, std::uint64_t budget_ms) {
  auto memory = GuestMemory::create(memory_bytes);
  if (!memory) return memory.error();
  GuestState state(memory_bytes);
  auto boot = prepare_guest(elf, stack, *memory, state);
  if (!boot) return boot.error();
  auto cpuid = system.supported_cpuid();
  if (!cpuid) return cpuid.error();

  ChannelEnd no_channel;  // never called: the first channel read pauses the run
  SyscallContext context{state, *memory, no_channel, host_random, host_clock};
  ExitDispatcher dispatcher(context);
  dispatcher.pause_at_channel_read();
  auto vm = Vm::create(system, *memory);
  if (!vm) return vm.error();
  auto vcpu = Vcpu::create(system, *vm);
  if (!vcpu) return vcpu.error();
  if (auto set = vcpu->set_up(system, *boot, 0); !set) return set.error();
  if (auto paused = vcpu->run_to_pause(dispatcher, state, budget_ms); !paused) return paused.error();
  auto snapshot = vcpu->snapshot();
  if (!snapshot) return snapshot.error();
  // Kernels differ on where they report RIP for a port-I/O exit (at the `out` or after it).
  // A fork never re-executes the `out`: it emulates the read itself and resumes at the
  // `sysretq` (serve()), so RIP is normalised here and the difference cannot matter.
  snapshot->regs.rip = kSyscallOut;
  auto image = std::make_shared<const MasterImage>(
      MasterImage{std::move(*memory), std::move(state), std::move(*snapshot), std::move(*cpuid)});
  return MasterVm(std::move(image));
}

Result<VmShell> MasterVm::make_shell(const KvmSystem& system) const {
  auto vm = Vm::create_empty(system);
  if (!vm) return vm.error();
  auto vcpu = Vcpu::create(system, *vm);
  if (!vcpu) return vcpu.error();
  if (auto set = vcpu->set_cpuid(image_->cpuid); !set) return set.error();
  return VmShell{std::move(*vm), std::move(*vcpu)};
}

Result<void> MasterVm::prewarm(const KvmSystem& system, std::size_t count) {
  while (pool_.size() < count) {
    auto shell = make_shell(system);
    if (!shell) return shell.error();
    pool_.push_back(std::move(*shell));
  }
  return {};
}

Result<MicroVmFork> MasterVm::fork(const KvmSystem& system) {
  auto memory = image_->memory.fork_private();
  if (!memory) return memory.error();
  std::optional<VmShell> shell;
  if (!pool_.empty()) {
    shell.emplace(std::move(pool_.back()));
    pool_.pop_back();
  } else {
    auto made = make_shell(system);
    if (!made) return made.error();
    shell.emplace(std::move(*made));
  }
  if (auto set = shell->vm.set_memory(*memory); !set) return set.error();
  if (auto restored = shell->vcpu.restore(image_->vcpu); !restored) return restored.error();
  // Moving the memory keeps its mapping (the address the VM's slot 0 holds).
  MicroVmFork fork(image_, std::move(*memory), std::move(shell->vm), std::move(shell->vcpu));
  fork.reseed_ = reseed_;
  if (auto reseeded = fork.reseed(); !reseeded) return reseeded.error();
  return fork;
}

Result<void> MasterVm::recycle(MicroVmFork fork) {
  if (fork.image_ != image_) {
    return fail(Cause::master, "a fork of another master cannot join this pool");
  }
  // The slot goes before the fork's memory does (at the end of this function).
  if (auto cleared = fork.vm_.clear_memory(); !cleared) return cleared.error();
  pool_.push_back(VmShell{std::move(fork.vm_), std::move(fork.vcpu_)});
  return {};
}

Result<int> MicroVmFork::serve(ChannelEnd& channel, std::uint64_t budget_ms) {
  if (vcpu_.state() != VcpuState::created) {
    return fail(Cause::master, "a fork serves one request; reset it first (its vCPU is " +
                                           std::string(vcpu_state_name(vcpu_.state())) + ")");
  }
  SyscallContext context{state_, memory_, channel, host_random, host_clock};
  ExitDispatcher dispatcher(context);
  kvm_regs regs = image_->vcpu.regs;
  auto first = dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0);
  if (!first) return first.error();
  if (first->exit_status) return *first->exit_status;
  // Resume after the `out`. A reused vCPU may still have the completion of its last port
  // exit pending: KVM skips the `out` only when RIP is still at it, which it is not now.
  if (regs.rip == kSyscallOut) regs.rip = kSyscallReturn;
  if (auto set = vcpu_.set_regs(regs); !set) return set.error();
  return vcpu_.run(dispatcher, state_, budget_ms);
}

Result<void> MicroVmFork::reset() {
  if (auto dropped = memory_.reset_to_pristine(); !dropped) return dropped.error();
  state_ = image_->state;
  if (auto reseeded = reseed(); !reseeded) return reseeded.error();
  return vcpu_.restore(image_->vcpu);
}

Result<void> MicroVmFork::reseed() {
  if (!reseed_) return {};
  auto report = reseed_fork_secrets(memory_, state_, image_->vcpu.regs.rsp, host_random);
  if (!report) return report.error();
  secrets_ = *report;
  return {};
}

}  // namespace sojourn::sandbox::kvm
