// MicrovmJail: one master VM booted at start, a copy-on-write fork of it per run. The fork
// runs on a monitor thread of its own; the guest's channel is one end of a socketpair that the
// monitor reads and writes for the guest's read(3)/write(3), and the other end is the same
// HostChannel the process jail talks through, so both jails share one conversation
// (guest_session.cpp) and the node cannot tell them apart.
#include "sojourn/sandbox/microvm_jail.hpp"

#include <poll.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <condition_variable>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/fork.hpp"
#include "sandbox/kvm/monitor_filter.hpp"
#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/host_channel.hpp"
#include "sandbox/microvm/monitor_errors.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace sojourn::sandbox {

namespace {

using Clock = std::chrono::steady_clock;
namespace kvm = sojourn::sandbox::kvm;

// The calling thread's CPU time in microseconds (clock_gettime is in the monitor's table).
std::uint64_t thread_cpu_us() {
  timespec ts{};
  if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

// The guest's descriptor 3 seen from the monitor: the monitor's end of the socketpair. A
// read blocks like the guest's read on a pipe would; the vCPU's budget signal interrupts it
// (EINTR goes to the guest, whose next KVM_RUN then ends the run).
kvm::ChannelEnd socket_channel(int fd) {
  return kvm::ChannelEnd{
      [fd](std::span<std::byte> out) -> std::int64_t {
        const ssize_t n = ::read(fd, out.data(), out.size());
        return n >= 0 ? n : -errno;
      },
      [fd](std::span<const std::byte> in) -> std::int64_t {
        const ssize_t n = ::send(fd, in.data(), in.size(), MSG_NOSIGNAL);
        return n >= 0 ? n : -errno;
      }};
}


}  // namespace

// The microvm level: the master VM and its pool of shells; a fork of the master per run.
class MasterForkJail final : public MicrovmJail {
 public:
  MasterForkJail(MicrovmJailOptions options, std::string guest_path, kvm::KvmSystem system, kvm::MasterVm master,
       double boot_ms)
      : options_(std::move(options)), guest_path_(std::move(guest_path)), system_(std::move(system)),
        master_(std::move(master)), boot_ms_(boot_ms) {}

  Result<Value> run(const RunInput& input, HostCalls* host) override {
    if (Result<void> ok = check(input); !ok) return ok.error();
    channel::RunRequest request = make_run_request(input, host);
    auto done = in_microvm(input, channel::encode_frame(request), channel::Kind::run_done, host);
    if (!done) return done.error();
    return run_outcome(*done);
  }

  Result<AgentOutcome> run_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) override {
    if (Result<void> ok = check(input); !ok) return ok.error();
    channel::AgentRequest request{make_run_request(input, host), std::string(agent.entry), agent.state, agent.info};
    std::uint64_t cpu_us = 0;  // the vCPU thread's CPU time, measured by the kernel
    auto done = in_microvm(input, channel::encode_frame(request), channel::Kind::agent_done, host, &cpu_us);
    if (!done) return done.error();
    Result<AgentOutcome> outcome = agent_outcome(*done);
    if (outcome) outcome->host_cpu_us = cpu_us;
    return outcome;
  }

  MicrovmJailStatus status() const override {
    std::lock_guard lock(mutex_);
    MicrovmJailStatus s;
    s.guest_path = guest_path_;
    s.master_boot_ms = boot_ms_;
    s.runs = runs_;
    s.killed = killed_;
    s.faults = faults_;
    s.pooled = master_.pooled();
    return s;
  }

  std::string describe() const override {
    const MicrovmJailStatus s = status();
    return "guest " + s.guest_path + ", master booted in " + std::to_string(static_cast<int>(s.master_boot_ms)) +
           " ms, " + std::to_string(s.pooled) + " VMs pooled";
  }

 private:
  Result<void> check(const RunInput& input) const {
    if (Result<void> ok = check_run_input(input); !ok) return ok;
    const std::uint64_t room = options_.memory_bytes - kGuestOverheadBytes;
    if (input.limits.memory_bytes > room) {
      return errors::invalid_argument("a memory limit of " + std::to_string(input.limits.memory_bytes) +
                                      " bytes does not fit in a microVM (at most " + std::to_string(room) + ")");
    }
    return {};
  }

  Result<kvm::MicroVmFork> fork() {
    std::lock_guard lock(mutex_);
    auto made = master_.fork(system_);
    if (!made) return wire_error(made.error());
    ++runs_;
    return std::move(*made);
  }

  void recycle(kvm::MicroVmFork fork, bool clean) {
    std::lock_guard lock(mutex_);
    // A VM whose vCPU did not end cleanly is not reused: its shell goes with it.
    if (!clean || master_.pooled() >= options_.pool) return;
    if (auto kept = master_.recycle(std::move(fork)); !kept) {
      log_warn("microvm jail", "a finished microVM could not be recycled: " + kept.error().message());
    }
  }

  // `cpu_us`, when given, receives the CPU time of the thread that ran the vCPU: the kernel
  // charges a guest's time in KVM_RUN to that thread, so the guest cannot under-report it.
  // Strong steps: the same guest and channel as the process jail, so an image taken in one
  // resumes in the other (same executable, same arena address).
  Result<StrongOutcome> run_strong(const RunInput& input, const AgentInput& agent, HostCalls* host) override {
    if (Result<void> ok = check(input); !ok) return ok.error();
    channel::AgentRequest request{make_run_request(input, host), std::string(agent.entry), agent.state, agent.info, true};
    return strong_in_microvm(input, channel::encode_frame(request), host, 0);
  }

  // The image is hashed again here (`hashed` unused): its request is built by the session code
  // both jails share, which checks it whole.
  Result<StrongOutcome> resume_strong(std::span<const std::uint8_t> bytes, const RunInput& input, const Value& info,
                                      HostCalls* host, const std::array<std::uint8_t, 32>* = nullptr) override {
    if (Result<void> ok = check(input); !ok) return ok.error();
    std::uint64_t restore_us = 0;
    Result<std::vector<std::uint8_t>> request = strong_resume_request(bytes, input, info, host, guest_path_, &restore_us);
    if (!request) return request.error();
    return strong_in_microvm(input, *request, host, restore_us);
  }

  Result<StrongOutcome> strong_in_microvm(const RunInput& input, const std::vector<std::uint8_t>& request, HostCalls* host,
                                          std::uint64_t restore_us) {
    return strong_step(input, guest_path_, restore_us,
                       [&](std::uint64_t* cpu_us, std::vector<std::uint8_t>* span_frame, std::size_t arena_bytes) {
                         return in_microvm(input, request, channel::Kind::agent_done, host, cpu_us, span_frame, arena_bytes);
                       });
  }

  Result<std::vector<std::uint8_t>> in_microvm(const RunInput& input, const std::vector<std::uint8_t>& request,
                                               channel::Kind done, HostCalls* host, std::uint64_t* cpu_us = nullptr,
                                               std::vector<std::uint8_t>* heap_span = nullptr,
                                               std::uint64_t max_frame_bytes = 0) {
    const Limits& limits = input.limits;
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
      return errors::internal(std::string("socketpair: ") + std::strerror(errno));
    }
    UniqueFd host_end(pair[0]);
    UniqueFd monitor_end(pair[1]);

    auto vm = fork();
    if (!vm) return vm.error();
    vm->state().jit_allowed = input.allow_jit;

    // The monitor's budget ends the vCPU a little after the host's deadline: the host's error
    // (deadline, with the run's own limits) is the one reported.
    const std::uint64_t budget_ms = limits.wall_ms + 2ull * options_.kill_grace_ms;
    kvm::Result<int> ended = 0;  // how the run ended, from the monitor's side: exit status, or the fault
    std::mutex finished_mutex;
    std::condition_variable finished_cv;
    bool finished = false;
    // jthread: joined on every way out, before what it captures by reference goes.
    std::jthread monitor([&] {
      // The thread the guest's exits reach runs under the monitor's own seccomp table (and so
      // does its budget timer): KVM requests by number, its channel, no file, no exec.
      kvm::MonitorFilterOptions filter;
      filter.channel_fds = {monitor_end.get()};
      filter.allow_boot = false;
      if (auto installed = kvm::install_monitor_filter(filter); !installed) {
        ended = installed.error();
      } else {
        kvm::ChannelEnd channel = socket_channel(monitor_end.get());
        const std::uint64_t cpu_before = thread_cpu_us();
        ended = vm->serve(channel, budget_ms);
        if (cpu_us != nullptr) *cpu_us = thread_cpu_us() - cpu_before;
      }
      // The guest is gone: the host's reads see the end of the channel.
      ::shutdown(monitor_end.get(), SHUT_RDWR);
      std::lock_guard lock(finished_mutex);
      finished = true;
      finished_cv.notify_one();
    });

    const auto deadline = Clock::now() + std::chrono::milliseconds(limits.wall_ms + options_.kill_grace_ms);
    HostChannel channel(std::move(host_end), deadline, input.abort);
    Conversation talk = converse(channel, request, done, limits, host, input.max_result_bytes, heap_span, max_frame_bytes);
    // Whatever the host decided, the guest's channel ends here: a guest blocked reading it
    // sees end-of-file. One that answered gets kill_grace_ms to exit by itself; one that did
    // not answer (a deadline, an abort, a broken protocol), or that spins after its answer,
    // is forced out of the vCPU at once rather than at its budget.
    ::shutdown(monitor_end.get(), SHUT_RDWR);
    {
      std::unique_lock lock(finished_mutex);
      if (!talk.done ||
          !finished_cv.wait_for(lock, std::chrono::milliseconds(options_.kill_grace_ms), [&] { return finished; })) {
        vm->force_exit();
      }
    }
    monitor.join();

    const bool clean = ended.ok();
    if (!clean) {
      std::lock_guard lock(mutex_);
      if (ended.error().cause == kvm::Cause::guest_fault || ended.error().cause == kvm::Cause::entry_failed) {
        ++faults_;
      }
    }
    recycle(std::move(*vm), clean);

    if (talk.done) return std::move(*talk.done);
    if (talk.broke) return *talk.broke;
    if (host_gave_up(talk.status)) {
      std::lock_guard lock(mutex_);
      ++killed_;
      return gave_up_error(talk.status, limits);
    }
    // The channel closed without an answer: the monitor says how the guest ended.
    if (!ended) {
      if (ended.error().cause == kvm::Cause::budget) return detail::limit_error(Errc::deadline, limits);
      return wire_error(ended.error());
    }
    return make_error(Errc::guest_crashed, "guest crashed: exited with status " + std::to_string(*ended) +
                                               " without an answer");
  }

  MicrovmJailOptions options_;
  std::string guest_path_;
  kvm::KvmSystem system_;
  mutable std::mutex mutex_;  // the master and its pool; the counters
  kvm::MasterVm master_;
  double boot_ms_ = 0;
  std::uint64_t runs_ = 0;
  std::uint64_t killed_ = 0;
  std::uint64_t faults_ = 0;
};

Result<std::unique_ptr<MicrovmJail>> MicrovmJail::start(const MicrovmJailOptions& options) {
  if (options.memory_bytes <= kGuestOverheadBytes) {
    return errors::invalid_argument("a microVM needs more than " + std::to_string(kGuestOverheadBytes) +
                                    " bytes of memory");
  }
  Result<std::string> path = find_guest_binary(options.guest_path);
  if (!path) return path.error();
  auto system = kvm::KvmSystem::open();
  if (!system) return wire_error(system.error());
  auto elf = kvm::read_elf_file(*path);
  if (!elf) return make_error(Errc::jail_unavailable, "microVM jail unavailable: " + elf.error().message());

  kvm::StackInputs stack{{"sojourn-guest", "--serve"}, {}, {}};
  kvm::host_random(std::as_writable_bytes(std::span(stack.random)));
  const auto t0 = Clock::now();
  auto master = kvm::MasterVm::boot(*system, *elf, stack, options.memory_bytes, options.boot_budget_ms);
  if (!master) return wire_error(master.error());
  const double boot_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (auto warmed = master->prewarm(*system, options.pool); !warmed) return wire_error(warmed.error());
  return std::unique_ptr<MicrovmJail>(
      std::make_unique<MasterForkJail>(options, *path, std::move(*system), std::move(*master), boot_ms));
}

}  // namespace sojourn::sandbox
