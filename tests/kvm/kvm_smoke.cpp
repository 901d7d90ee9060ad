// Proves the KVM test path works wherever the kvm tests run (on a KVM host or inside the
// nested QEMU guest): a VM runs a few bytes of real-mode code, and a host timer signal
// forces a spinning vCPU out of KVM_RUN, which the monitor's CPU budget kill relies on.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <pthread.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

namespace {

// Owns one descriptor; close is never retried.
class Fd {
 public:
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd& operator=(Fd&&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }

 private:
  int fd_;
};

// Owns one mmap'ed range.
class Mapping {
 public:
  Mapping(void* addr, std::size_t size) noexcept : addr_(addr), size_(size) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr_ != MAP_FAILED) ::munmap(addr_, size_);
  }
  bool valid() const noexcept { return addr_ != MAP_FAILED; }
  void* get() const noexcept { return addr_; }
  std::size_t size() const noexcept { return size_; }

 private:
  void* addr_;
  std::size_t size_;
};

constexpr std::size_t kGuestMemSize = 0x10000;
constexpr std::uint64_t kCodeAddr = 0x1000;

std::string errno_text() { return std::strerror(errno); }

// One VM with one vCPU in real mode, guest memory [0, kGuestMemSize) holding `code` at kCodeAddr.
class RealModeVm {
 public:
  template <std::size_t N>
  explicit RealModeVm(const std::array<std::uint8_t, N>& code)
      : mem_(::mmap(nullptr, kGuestMemSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
             kGuestMemSize),
        kvm_(::open("/dev/kvm", O_RDWR | O_CLOEXEC)),
        // SAFETY: ioctl on the /dev/kvm descriptor; KVM_CREATE_VM takes the machine type 0.
        vm_(kvm_.get() < 0 ? -1 : ::ioctl(kvm_.get(), KVM_CREATE_VM, 0UL)),
        // SAFETY: ioctl on the VM descriptor; vCPU id 0.
        vcpu_(vm_.get() < 0 ? -1 : ::ioctl(vm_.get(), KVM_CREATE_VCPU, 0UL)),
        // SAFETY: ioctl on the /dev/kvm descriptor, no argument.
        run_(map_run(kvm_.get() < 0 ? -1 : ::ioctl(kvm_.get(), KVM_GET_VCPU_MMAP_SIZE, 0))) {
    REQUIRE_MESSAGE(kvm_.get() >= 0, "open /dev/kvm: " << errno_text());
    REQUIRE_MESSAGE(vm_.get() >= 0, "KVM_CREATE_VM failed");
    REQUIRE(mem_.valid());
    REQUIRE_MESSAGE(vcpu_.get() >= 0, "KVM_CREATE_VCPU failed");
    REQUIRE_MESSAGE(run_.valid(), "mmap of kvm_run failed");
    static_assert(N <= kGuestMemSize - kCodeAddr);
    // SAFETY: mem_ maps kGuestMemSize bytes and N fits after kCodeAddr (static_assert above).
    std::memcpy(static_cast<std::uint8_t*>(mem_.get()) + kCodeAddr, code.data(), N);

    kvm_userspace_memory_region region{};
    region.slot = 0;
    region.guest_phys_addr = 0;
    region.memory_size = kGuestMemSize;
    // SAFETY: the host address is the integer value of our own live mapping; KVM only stores it.
    region.userspace_addr = reinterpret_cast<std::uintptr_t>(mem_.get());
    // SAFETY: ioctl on the VM descriptor with a fully initialised region; the memory it names
    // outlives the VM (mem_ is declared first, so it is unmapped last).
    REQUIRE(::ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &region) == 0);

    kvm_sregs sregs{};
    // SAFETY: ioctl on the vCPU descriptor filling a kvm_sregs we own.
    REQUIRE(::ioctl(vcpu_.get(), KVM_GET_SREGS, &sregs) == 0);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    // SAFETY: ioctl on the vCPU descriptor reading a kvm_sregs we own.
    REQUIRE(::ioctl(vcpu_.get(), KVM_SET_SREGS, &sregs) == 0);
    kvm_regs regs{};
    regs.rip = kCodeAddr;
    regs.rflags = 0x2;  // bit 1 is reserved and must be set
    // SAFETY: ioctl on the vCPU descriptor reading a kvm_regs we own.
    REQUIRE(::ioctl(vcpu_.get(), KVM_SET_REGS, &regs) == 0);
  }

  int kvm() const noexcept { return kvm_.get(); }
  int vcpu() const noexcept { return vcpu_.get(); }
  // SAFETY: run_ maps at least sizeof(kvm_run) bytes (KVM_GET_VCPU_MMAP_SIZE is never smaller).
  kvm_run& run() const noexcept { return *static_cast<kvm_run*>(run_.get()); }

  // KVM_RUN once; returns 0 or the errno of a failed run.
  int run_once() const noexcept {
    // SAFETY: ioctl on the vCPU descriptor; KVM_RUN takes no argument and fills the mapped kvm_run.
    return ::ioctl(vcpu_.get(), KVM_RUN, 0) == 0 ? 0 : errno;
  }

  std::uint64_t rip() const {
    kvm_regs regs{};
    // SAFETY: ioctl on the vCPU descriptor filling a kvm_regs we own.
    REQUIRE(::ioctl(vcpu_.get(), KVM_GET_REGS, &regs) == 0);
    return regs.rip;
  }

 private:
  Mapping map_run(int size) const noexcept {
    if (size < static_cast<int>(sizeof(kvm_run)) || vcpu_.get() < 0) return Mapping(MAP_FAILED, 0);
    const auto bytes = static_cast<std::size_t>(size);
    return Mapping(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_.get(), 0), bytes);
  }

  // Members are destroyed in reverse order: the kvm_run mapping, the vCPU, the VM, and the
  // guest memory last.
  Mapping mem_;
  Fd kvm_;
  Fd vm_;
  Fd vcpu_;
  Mapping run_;
};

std::atomic<int> g_kicks{0};
kvm_run* g_run_to_stop = nullptr;

void on_kick(int) {
  g_kicks.fetch_add(1, std::memory_order_relaxed);
  // SAFETY: g_run_to_stop points at the live kvm_run of the test's vCPU while the timer is armed;
  // immediate_exit is the field KVM documents for a signal handler to close the re-entry race.
  if (g_run_to_stop != nullptr) g_run_to_stop->immediate_exit = 1;
}

// Installs on_kick for `sig` without SA_RESTART (so KVM_RUN returns EINTR) and restores on exit.
class KickHandler {
 public:
  explicit KickHandler(int sig) : sig_(sig) {
    struct sigaction action {};
    action.sa_handler = on_kick;
    sigemptyset(&action.sa_mask);
    REQUIRE(::sigaction(sig_, &action, &previous_) == 0);
  }
  KickHandler(const KickHandler&) = delete;
  KickHandler& operator=(const KickHandler&) = delete;
  ~KickHandler() { ::sigaction(sig_, &previous_, nullptr); }

 private:
  int sig_;
  struct sigaction previous_ {};
};

// A one-shot POSIX timer that sends `sig` to this process after `delay`.
class OneShotTimer {
 public:
  OneShotTimer(int sig, std::chrono::milliseconds delay) {
    sigevent event{};
    event.sigev_notify = SIGEV_SIGNAL;
    event.sigev_signo = sig;
    REQUIRE(::timer_create(CLOCK_MONOTONIC, &event, &timer_) == 0);
    itimerspec spec{};
    spec.it_value.tv_sec = delay.count() / 1000;
    spec.it_value.tv_nsec = (delay.count() % 1000) * 1'000'000;
    REQUIRE(::timer_settime(timer_, 0, &spec, nullptr) == 0);
  }
  OneShotTimer(const OneShotTimer&) = delete;
  OneShotTimer& operator=(const OneShotTimer&) = delete;
  ~OneShotTimer() { ::timer_delete(timer_); }

 private:
  timer_t timer_{};
};

}  // namespace

TEST_CASE("/dev/kvm speaks the stable KVM API version 12") {
  const Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  REQUIRE_MESSAGE(kvm.get() >= 0, "open /dev/kvm: " << errno_text());
  // SAFETY: ioctl on the /dev/kvm descriptor, no argument.
  CHECK(::ioctl(kvm.get(), KVM_GET_API_VERSION, 0) == KVM_API_VERSION);
  // SAFETY: ioctl on the /dev/kvm descriptor with a capability number.
  CHECK(::ioctl(kvm.get(), KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) > 0);
}

TEST_CASE("real-mode code exits with its port write, then with hlt") {
  const std::array<std::uint8_t, 11> program{
      0xb0, 0x42,        // mov al, 0x42
      0xe6, 0x10,        // out 0x10, al
      0xba, 0x34, 0x12,  // mov dx, 0x1234
      0xb0, 0x7f,        // mov al, 0x7f
      0xee,              // out dx, al
      0xf4,              // hlt
  };
  RealModeVm vm(program);

  const std::array<std::pair<std::uint16_t, std::uint8_t>, 2> expected{{{0x10, 0x42}, {0x1234, 0x7f}}};
  for (const auto& [port, value] : expected) {
    REQUIRE(vm.run_once() == 0);
    REQUIRE(vm.run().exit_reason == KVM_EXIT_IO);
    const auto& io = vm.run().io;
    CHECK(io.direction == KVM_EXIT_IO_OUT);
    CHECK(io.size == 1);
    CHECK(io.count == 1);
    CHECK(io.port == port);
    // SAFETY: for KVM_EXIT_IO, data_offset points inside the kvm_run mapping at size*count bytes.
    const auto* data = reinterpret_cast<const std::uint8_t*>(&vm.run()) + io.data_offset;
    CHECK(*data == value);
  }
  REQUIRE(vm.run_once() == 0);
  CHECK(vm.run().exit_reason == KVM_EXIT_HLT);
  CHECK(vm.rip() == kCodeAddr + program.size());
}

TEST_CASE("a host timer signal kicks a spinning vCPU out of KVM_RUN") {
  const std::array<std::uint8_t, 2> spin{0xeb, 0xfe};  // jmp $
  RealModeVm vm(spin);
  KickHandler handler(SIGALRM);
  g_kicks = 0;
  g_run_to_stop = &vm.run();
  const auto start = std::chrono::steady_clock::now();
  int err = 0;
  {
    OneShotTimer timer(SIGALRM, std::chrono::milliseconds(200));
    err = vm.run_once();
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  g_run_to_stop = nullptr;
  CHECK(err == EINTR);
  CHECK(vm.run().exit_reason == KVM_EXIT_INTR);
  CHECK(g_kicks.load() == 1);
  CHECK(elapsed >= std::chrono::milliseconds(150));
  CHECK(elapsed < std::chrono::seconds(20));
  CHECK(vm.rip() == kCodeAddr);  // still on the jmp: the guest ran, it was only interrupted

  // With immediate_exit still set, the next KVM_RUN returns at once without entering the guest.
  CHECK(vm.run_once() == EINTR);
  vm.run().immediate_exit = 0;
}

TEST_CASE("a signal from another thread kicks the vCPU thread out of KVM_RUN") {
  const std::array<std::uint8_t, 2> spin{0xeb, 0xfe};  // jmp $
  RealModeVm vm(spin);
  KickHandler handler(SIGUSR1);
  g_kicks = 0;
  g_run_to_stop = nullptr;  // plain EINTR, without immediate_exit
  const pthread_t vcpu_thread = ::pthread_self();
  std::atomic<bool> stop{false};
  std::thread kicker([&] {
    // Signal until the vCPU thread has left KVM_RUN: a signal sent just before it entered the
    // guest would be handled in user space and lost.
    while (!stop.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ::pthread_kill(vcpu_thread, SIGUSR1);
    }
  });
  const int err = vm.run_once();
  stop = true;
  kicker.join();
  CHECK(err == EINTR);
  CHECK(vm.run().exit_reason == KVM_EXIT_INTR);
  CHECK(g_kicks.load() >= 1);
}
