// KVM_CREATE_VCPU, register set-up and the run loop.
#include "sandbox/kvm/vcpu.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/kvm/kvm_abi.hpp"
#include "sandbox/kvm/long_mode.hpp"

namespace sojourn::sandbox::kvm {

namespace {
int vcpu_ioctl(int fd, unsigned long request, const void* arg) {
  // SAFETY: every caller passes the structure its request names, alive for the call.
  return ::ioctl(fd, request, arg);
}

}  // namespace

void prepare_kick_signal() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action{};
    action.sa_handler = [](int) {};
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    ::sigaction(kKickSignal, &action, nullptr);
  });
}

namespace {
// Sets immediate_exit and signals the vCPU thread once `budget_ms` have passed, or at once
// when fire() is called (from any thread).
class BudgetTimer {
 public:
  BudgetTimer(kvm_run* run, std::uint64_t budget_ms) : run_(run), thread_(::pthread_self()) {
    watcher_ = std::thread([this, budget_ms] {
      std::unique_lock lock(mutex_);
      done_cv_.wait_for(lock, std::chrono::milliseconds(budget_ms), [this] { return done_ || fired_; });
      if (!done_) {
        expired_.store(true);
        // SAFETY: run_ is the vCPU's mapped kvm_run page, alive until the timer is destroyed.
        __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
        ::pthread_kill(thread_, kKickSignal);
      }
    });
  }
  ~BudgetTimer() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    done_cv_.notify_one();
    watcher_.join();
  }
  void fire() {
    {
      std::lock_guard lock(mutex_);
      fired_ = true;
    }
    done_cv_.notify_one();
  }
  bool expired() const noexcept { return expired_.load(); }
  const std::atomic<bool>& expired_flag() const noexcept { return expired_; }

 private:
  kvm_run* run_;
  pthread_t thread_;
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  bool fired_ = false;
  std::atomic<bool> expired_{false};
  std::thread watcher_;
};
}  // namespace

struct Vcpu::ForcedExit {
  std::mutex mutex;
  BudgetTimer* running = nullptr;  // the current run's timer
  bool requested = false;          // force_exit() came before the run started
};

Vcpu::Vcpu(UniqueFd fd, RunPage run)
    : fd_(std::move(fd)), run_(std::move(run)), forced_(std::make_shared<ForcedExit>()) {}

void Vcpu::force_exit() {
  std::lock_guard lock(forced_->mutex);
  forced_->requested = true;
  if (forced_->running != nullptr) forced_->running->fire();
}

void Vcpu::clear_forced_exit() {
  std::lock_guard lock(forced_->mutex);
  forced_->requested = false;
}

RunPage::~RunPage() {
  // SAFETY: run_/size_ are the vCPU's own mapping, unmapped once.
  if (run_ != nullptr) ::munmap(run_, size_);
}

Result<Vcpu> Vcpu::create(const KvmSystem& system, const Vm& vm) {
  // SAFETY: KVM_CREATE_VCPU takes the vCPU id 0 by value.
  UniqueFd fd(::ioctl(vm.fd(), KVM_CREATE_VCPU, 0UL));  // NOLINT: variadic ioctl
  if (!fd) return ioctl_error("KVM_CREATE_VCPU");
  // SAFETY: the vCPU fd's shared run page of run_size() bytes, owned by RunPage.
  void* page = ::mmap(nullptr, system.run_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (page == MAP_FAILED) return ioctl_error("mmap of kvm_run");
  return Vcpu(std::move(fd), RunPage(static_cast<kvm_run*>(page), system.run_size()));
}

Result<void> Vcpu::set_cpuid(std::span<const kvm_cpuid_entry2> leaves) {
  std::vector<std::uint64_t> buffer((sizeof(abi::CpuidHeader) + leaves.size() * sizeof(kvm_cpuid_entry2)) / 8 + 1);
  // SAFETY: buffer (8-byte aligned) holds the kernel's header and every entry after it.
  auto* cpuid = reinterpret_cast<abi::CpuidHeader*>(buffer.data());
  cpuid->nent = static_cast<std::uint32_t>(leaves.size());
  // SAFETY: the entries start right after the 8-byte header, inside the buffer.
  auto* entries = reinterpret_cast<kvm_cpuid_entry2*>(cpuid + 1);
  for (std::size_t i = 0; i < leaves.size(); ++i) entries[i] = leaves[i];
  // SAFETY: KVM_SET_CPUID2 reads the header and nent entries from the buffer, alive for the call.
  if (vcpu_ioctl(fd_.get(), abi::kSetCpuid2, cpuid) != 0) return ioctl_error("KVM_SET_CPUID2");
  return {};
}

Result<void> Vcpu::set_up(const KvmSystem& system, const BootRegisters& boot, std::uint64_t fs_base) {
  auto leaves = system.supported_cpuid();
  if (!leaves) return leaves.error();
  std::uint64_t supported_xcr0 = 0;
  std::uint32_t leaf7_ebx = 0;
  for (const auto& leaf : *leaves) {
    if (leaf.function == 0xd && leaf.index == 0) supported_xcr0 = leaf.eax | (std::uint64_t{leaf.edx} << 32);
    if (leaf.function == 7 && leaf.index == 0) leaf7_ebx = leaf.ebx;
  }
  if (auto set = set_cpuid(*leaves); !set) return set.error();
  // SAFETY (the ioctls below): each passes the structure its request names, on the stack,
  // alive for the call.

  kvm_sregs sregs{};
  if (vcpu_ioctl(fd_.get(), KVM_GET_SREGS, &sregs) != 0) return ioctl_error("KVM_GET_SREGS");
  set_long_mode_sregs(sregs, cr4_for(leaf7_ebx));  // CPUID is set: KVM accepts SMEP/SMAP now
  if (vcpu_ioctl(fd_.get(), KVM_SET_SREGS, &sregs) != 0) return ioctl_error("KVM_SET_SREGS");

  kvm_regs regs{};
  regs.rip = boot.rip;
  regs.rsp = boot.rsp;
  regs.rflags = kInitialRflags;
  if (vcpu_ioctl(fd_.get(), KVM_SET_REGS, &regs) != 0) return ioctl_error("KVM_SET_REGS");

  kvm_xcrs xcrs{};
  xcrs.nr_xcrs = 1;
  xcrs.xcrs[0].xcr = 0;
  xcrs.xcrs[0].value = xcr0_for(supported_xcr0);
  if (vcpu_ioctl(fd_.get(), KVM_SET_XCRS, &xcrs) != 0) return ioctl_error("KVM_SET_XCRS");

  const auto msrs = long_mode_msrs(fs_base);
  return set_msrs(msrs);
}

Result<void> Vcpu::set_msrs(std::span<const MsrValue> msrs) {
  std::vector<std::uint64_t> buffer((sizeof(abi::MsrsHeader) + msrs.size() * sizeof(kvm_msr_entry)) / 8);
  // SAFETY: buffer (8-byte aligned) holds the kernel's header and msrs.size() entries after it.
  auto* header = reinterpret_cast<abi::MsrsHeader*>(buffer.data());
  header->nmsrs = static_cast<std::uint32_t>(msrs.size());
  // SAFETY: the entries start right after the 8-byte header, inside the buffer.
  auto* entries = reinterpret_cast<kvm_msr_entry*>(header + 1);
  for (std::size_t i = 0; i < msrs.size(); ++i) {
    entries[i].index = msrs[i].index;
    entries[i].data = msrs[i].value;
  }
  // KVM_SET_MSRS returns how many it set: fewer means one was refused.
  if (vcpu_ioctl(fd_.get(), abi::kSetMsrs, header) != static_cast<int>(msrs.size())) return ioctl_error("KVM_SET_MSRS");
  return {};
}

Result<void> Vcpu::set_segment_bases(const GuestState& state) {
  const MsrValue bases[] = {{msr::kFsBase, state.fs_base}, {msr::kGsBase, state.gs_base}};
  return set_msrs(bases);
}

Result<std::optional<int>> Vcpu::finish(Result<int> result) {
  (void)machine_.finish();
  if (!result) return result.error();
  return std::optional<int>(*result);
}

Result<int> Vcpu::run(ExitDispatcher& dispatcher, GuestState& state, std::uint64_t budget_ms) {
  auto ended = run_loop(dispatcher, state, budget_ms);
  if (!ended) return ended.error();
  if (!*ended) {
    (void)machine_.finish();
    return fail(Cause::bug, "a run paused without a master");
  }
  return **ended;
}

Result<void> Vcpu::run_to_pause(ExitDispatcher& dispatcher, GuestState& state, std::uint64_t budget_ms) {
  auto ended = run_loop(dispatcher, state, budget_ms);
  if (!ended) return ended.error();
  if (*ended) {
    return fail(Cause::master, "the guest exited with status " + std::to_string(**ended) +
                                           " before waiting for its first request");
  }
  return {};
}

Result<std::optional<int>> Vcpu::run_loop(ExitDispatcher& dispatcher, GuestState& state, std::uint64_t budget_ms) {
  if (auto started = machine_.state() == VcpuState::paused ? machine_.resume() : machine_.start(); !started) {
    return started.error();
  }
  prepare_kick_signal();
  kvm_run* run = run_.get();
  BudgetTimer timer(run, budget_ms);
  // The timer stops KVM_RUN; through its flag the dispatcher stops the monitor's own work for
  // the guest at the same moment (a syscall or fault handled after it ends the run).
  struct BudgetLink {
    ExitDispatcher& dispatcher;
    ~BudgetLink() { dispatcher.set_budget(nullptr, 0); }  // the timer goes with this frame
  } link{dispatcher};
  dispatcher.set_budget(&timer.expired_flag(), budget_ms);
  // force_exit() reaches this run's timer while it lives (and one made earlier fires it now).
  struct Registration {
    ForcedExit& forced;
    Registration(ForcedExit& f, BudgetTimer& t) : forced(f) {
      std::lock_guard lock(forced.mutex);
      forced.running = &t;
      if (forced.requested) t.fire();
    }
    ~Registration() {
      std::lock_guard lock(forced.mutex);
      forced.running = nullptr;
    }
  } registration(*forced_, timer);
  // SOJOURN_KVM_TRACE=1: one line per exit on stderr (bring-up on a new host kernel).
  const bool trace = std::getenv("SOJOURN_KVM_TRACE") != nullptr;
  while (true) {
    // SAFETY: KVM_RUN takes no argument; run is our mapped kvm_run page.
    if (::ioctl(fd_.get(), KVM_RUN, 0UL) != 0) {
      if (errno != EINTR) return finish(ioctl_error("KVM_RUN"));
      run->exit_reason = KVM_EXIT_INTR;  // a signal before or during the run
      __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    }
    const ExitAction action = handle_exit(*run, ExitContext{timer.expired(), budget_ms});
    if (action.kind == ExitAction::Kind::resume) continue;
    // SAFETY (GET/SET_REGS, GET_SREGS below): the kvm_regs / kvm_sregs on this stack frame.
    kvm_regs regs{};
    std::uint64_t cr2 = 0;
    if (action.kind != ExitAction::Kind::fatal || action.vector >= 0) {
      if (vcpu_ioctl(fd_.get(), KVM_GET_REGS, &regs) != 0) return finish(ioctl_error("KVM_GET_REGS"));
    }
    if (action.kind == ExitAction::Kind::page_fault) {
      kvm_sregs sregs{};
      if (vcpu_ioctl(fd_.get(), KVM_GET_SREGS, &sregs) != 0) return finish(ioctl_error("KVM_GET_SREGS"));
      cr2 = sregs.cr2;
    }
    if (trace) {
      std::fprintf(stderr, "kvm exit %u action %d rip %llx rax %llx rdi %llx rsi %llx rsp %llx cr2 %llx\n", run->exit_reason,
                   static_cast<int>(action.kind), static_cast<unsigned long long>(regs.rip),
                   static_cast<unsigned long long>(regs.rax), static_cast<unsigned long long>(regs.rdi),
                   static_cast<unsigned long long>(regs.rsi), static_cast<unsigned long long>(regs.rsp),
                   static_cast<unsigned long long>(cr2));
    }
    auto outcome = dispatcher.dispatch(action, regs, cr2);
    if (!outcome) return finish(outcome.error());
    if (outcome->exit_status) return finish(*outcome->exit_status);
    if (outcome->paused) {
      if (auto paused = machine_.pause(); !paused) return paused.error();
      return std::optional<int>{};
    }
    if (outcome->msrs_changed) {
      if (auto set = set_segment_bases(state); !set) return finish(set.error());
    }
    if (outcome->registers_changed && vcpu_ioctl(fd_.get(), KVM_SET_REGS, &regs) != 0) {
      return finish(ioctl_error("KVM_SET_REGS"));
    }
  }
}

}  // namespace sojourn::sandbox::kvm
