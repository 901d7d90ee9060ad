// bench_microvm: how fast a microVM starts and how much a guest syscall costs, beside the
// process jail's cold start in the same run. To the first Lua result ("return 1"): a microVM
// from scratch (memory, ELF, VM, vCPU, the guest's whole start-up), a copy-on-write fork of
// the master (new VM), a fork from the VM pool (prewarmed VM), a reset fork reused; and the
// monitor's round trip per guest syscall (a tiny guest looping on clock_gettime) beside a
// native syscall; and the node's microvm level as a whole (MicrovmJail::run).
// run_microvm_bench.sh runs it in the nested QEMU guest where the host has no usable KVM; it
// then says its figures are emulated.
#include <cpuid.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench/stats.hpp"
#include "sandbox/kvm/boot.hpp"
#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/fork.hpp"
#include "sandbox/kvm/harness/one_request.hpp"
#include "sandbox/kvm/monitor_filter.hpp"
#include "sojourn/sandbox/microvm_jail.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace sojourn::bench {
namespace {

using Clock = std::chrono::steady_clock;
using namespace sandbox::kvm;
using sojourn::sandbox::kvm::harness::OneRequest;

constexpr std::uint64_t kMemoryBytes = 64ULL << 20;
constexpr std::uint64_t kLoopMemoryBytes = 16ULL << 20;
constexpr std::uint64_t kBudgetMs = 30'000;
constexpr const char* kChunk = "return 1";
constexpr int kLoopSyscalls = 2000;

double us_since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

std::vector<std::byte> read_file(const std::string& path) {
  auto bytes = read_elf_file(path);
  return bytes ? std::move(*bytes) : std::vector<std::byte>{};
}

StackInputs stack_of(std::vector<std::string> argv) {
  StackInputs stack{std::move(argv), {}, {}};
  host_random(std::as_writable_bytes(std::span(stack.random)));
  return stack;
}

// Where the figures come from. Under QEMU's TCG every guest instruction is emulated: the
// microVM is a KVM guest of an emulated AMD-V CPU, ~10x slower, with exits far dearer.
struct Environment {
  bool emulated = false;
  std::string description;
};

Environment detect_environment() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  bool hypervisor = false;
  std::string signature;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0) hypervisor = (ecx >> 31) & 1U;
  if (hypervisor) {
    __cpuid(0x40000000U, eax, ebx, ecx, edx);
    char text[13] = {};
    std::memcpy(text, &ebx, 4);
    std::memcpy(text + 4, &ecx, 4);
    std::memcpy(text + 8, &edx, 4);
    signature = text;
  }
  Environment env;
  const char* told = std::getenv("SOJOURN_BENCH_EMULATED");
  env.emulated = (told != nullptr && std::string(told) == "1") || signature == "TCGTCGTCGTCG";
  if (env.emulated) {
    env.description = "a nested QEMU guest under TCG (signature \"" + signature +
                      "\"): EMULATED, absolute values mean little; compare the ratios";
  } else if (hypervisor) {
    env.description = "a virtual machine (hypervisor \"" + signature + "\") with its own KVM: nested virtualization";
  } else {
    env.description = "bare metal with KVM";
  }
  return env;
}

// The real guest booted from scratch, serving one request: everything a first start costs.
bool from_scratch(const KvmSystem& system, std::span<const std::byte> elf) {
  auto result = sojourn::sandbox::kvm::harness::run_from_scratch(system, elf, kChunk, kMemoryBytes, kBudgetMs);
  return result && *result == 1;
}

bool serve_one(MicroVmFork& fork) {
  OneRequest request(kChunk);
  auto status = fork.serve(request.end, kBudgetMs);
  return status && request.integer_result().ok() && *request.integer_result() == 1;
}

// The tiny loop guest: one run of kLoopSyscalls clock_gettime calls; appends the time between
// consecutive calls as seen by the monitor (exit, dispatch, re-entry, one loop turn).
bool syscall_round_trips(const KvmSystem& system, std::span<const std::byte> elf, std::vector<double>& samples) {
  auto memory = GuestMemory::create(kLoopMemoryBytes);
  if (!memory) return false;
  GuestState state(kLoopMemoryBytes);
  auto boot = prepare_guest(elf, stack_of({"syscall_loop", std::to_string(kLoopSyscalls)}), *memory, state);
  if (!boot) return false;
  std::vector<Clock::time_point> stamps;
  stamps.reserve(kLoopSyscalls);
  ChannelEnd none;
  SyscallContext context{state, *memory, none, host_random,
                         [&stamps](int clock, std::uint64_t& seconds, std::uint64_t& nanoseconds) {
                           stamps.push_back(Clock::now());
                           return host_clock(clock, seconds, nanoseconds);
                         }};
  ExitDispatcher dispatcher(context);
  auto vm = Vm::create(system, *memory);
  if (!vm) return false;
  auto vcpu = Vcpu::create(system, *vm);
  if (!vcpu || !vcpu->set_up(system, *boot, 0)) return false;
  auto status = vcpu->run(dispatcher, state, kBudgetMs);
  if (!status || *status != 0 || stamps.size() != static_cast<std::size_t>(kLoopSyscalls)) return false;
  for (std::size_t i = 10; i < stamps.size(); ++i) {  // the first turns touch fresh pages
    samples.push_back(std::chrono::duration<double, std::micro>(stamps[i] - stamps[i - 1]).count());
  }
  return true;
}

void native_syscalls(std::vector<double>& samples) {
  for (int i = 0; i < kLoopSyscalls; ++i) {
    timespec now{};
    const auto start = Clock::now();
    ::syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &now);  // the syscall itself, not the vDSO
    samples.push_back(us_since(start));
  }
}

struct Row {
  std::string name;
  std::function<std::optional<double>()> once;  // the timed part in microseconds, or a failure
  std::vector<double> samples;
  std::size_t failures = 0;
  bool available = true;
};

// Rounds alternate the rows, so a neighbour's busy spell hits every row alike.
void measure(std::vector<Row>& rows, std::size_t n, std::size_t rounds) {
  for (Row& row : rows) {
    for (int i = 0; i < 2 && row.available; ++i) (void)row.once();  // warm caches and allocators
  }
  for (std::size_t round = 0; round < rounds; ++round) {
    for (Row& row : rows) {
      if (!row.available) continue;
      for (std::size_t i = 0; i < n / rounds; ++i) {
        if (auto us = row.once()) row.samples.push_back(*us);
        else ++row.failures;
      }
    }
  }
}

void print_row(const std::string& name, const LatencySummary& s, double base, std::size_t failures) {
  char ratio[32] = "-";
  if (base > 0) std::snprintf(ratio, sizeof ratio, "%.2fx", s.median_us / base);
  std::printf("%-58s %11.1f %11.1f %10s %7zu\n", name.c_str(), s.median_us, s.p99_us, ratio, failures);
}

}  // namespace
}  // namespace sojourn::bench

int main(int argc, char** argv) {
  using namespace sojourn;
  using namespace sojourn::bench;
  std::size_t n = 40;
  std::string guest_path = SOJOURN_GUEST_ELF;
  std::string loop_path = SOJOURN_SYSCALL_LOOP_GUEST;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--runs") n = std::strtoul(argv[i + 1], nullptr, 10);
    else if (flag == "--guest") guest_path = argv[i + 1];
    else if (flag == "--loop-guest") loop_path = argv[i + 1];
  }
  constexpr std::size_t kRounds = 5;
  if (n < kRounds || argc % 2 == 0) {
    std::fprintf(stderr, "usage: bench_microvm [--runs N (>= 5, default 40)] [--guest ELF] [--loop-guest ELF]\n");
    return 2;
  }
  n = n / kRounds * kRounds;
  const std::vector<std::byte> elf = read_file(guest_path);
  const std::vector<std::byte> loop_elf = read_file(loop_path);
  if (elf.empty() || loop_elf.empty()) {
    std::fprintf(stderr, "bench_microvm: cannot read %s or %s\n", guest_path.c_str(), loop_path.c_str());
    return 1;
  }
  auto system = sandbox::kvm::KvmSystem::open();
  if (!system) {
    std::fprintf(stderr, "bench_microvm: %s\n(run it through bench/run_microvm_bench.sh, which falls back to a nested QEMU guest)\n",
                 system.error().message().c_str());
    return 1;
  }
  const Environment env = detect_environment();

  const auto master_start = Clock::now();
  auto master = sandbox::kvm::MasterVm::boot(*system, elf, stack_of({"sojourn-guest", "--serve"}), kMemoryBytes, kBudgetMs);
  if (!master) {
    std::fprintf(stderr, "bench_microvm: master: %s\n", master.error().message().c_str());
    return 1;
  }
  const double master_ms = us_since(master_start) / 1000;
  auto reused = master->fork(*system);
  if (!reused || !serve_one(*reused)) {
    std::fprintf(stderr, "bench_microvm: the first fork did not answer\n");
    return 1;
  }

  // The peer: the process jail of this build, started the same way the node starts it.
  sandbox::ProcessJailOptions jail_options;
  jail_options.guest_path = guest_path;
  auto jail = sandbox::ProcessJail::start(jail_options);
  sandbox::RunInput input;
  input.source = kChunk;
  input.limits = Limits{10'000'000, 16u << 20, 5000};

  // The node's microvm level: a pooled fork served by a monitor thread under seccomp, the
  // channel a socketpair, the same conversation as the process jail's.
  sandbox::MicrovmJailOptions microvm_options;
  microvm_options.guest_path = guest_path;
  auto microvm = sandbox::MicrovmJail::start(microvm_options);

  std::vector<Row> rows;
  rows.push_back({"process jail: zygote fork + jail + run (the peer)", [&]() -> std::optional<double> {
    const auto start = Clock::now();
    auto r = (*jail)->run(input, nullptr);
    if (!r || r->get(1).as_integer() != 1) return std::nullopt;
    return us_since(start);
  }});
  rows.back().available = jail.ok();
  rows.push_back({"microvm level: MicrovmJail::run (node path, seccomp'd)", [&]() -> std::optional<double> {
    const auto start = Clock::now();
    auto r = (*microvm)->run(input, nullptr);
    if (!r || r->get(1).as_integer() != 1) return std::nullopt;
    return us_since(start);
  }});
  rows.back().available = microvm.ok();
  rows.push_back({"microVM from scratch (memory, ELF, VM, vCPU, start-up)", [&]() -> std::optional<double> {
    const auto start = Clock::now();
    if (!from_scratch(*system, elf)) return std::nullopt;
    return us_since(start);
  }});
  rows.push_back({"microVM CoW fork of the master (new VM + vCPU)", [&]() -> std::optional<double> {
    const auto start = Clock::now();
    auto fork = master->fork(*system);  // the pool is empty here: the pooled row consumes its VM
    if (!fork || !serve_one(*fork)) return std::nullopt;
    return us_since(start);
  }});
  rows.push_back({"microVM fork from the VM pool (VM prewarmed, untimed)", [&]() -> std::optional<double> {
    if (!master->prewarm(*system, 1)) return std::nullopt;
    const auto start = Clock::now();
    auto fork = master->fork(*system);
    if (!fork || !serve_one(*fork)) return std::nullopt;
    return us_since(start);
  }});
  // The seccomp table's cost: the pooled fork on a thread of its own, as MicrovmJail runs it,
  // with and without install_monitor_filter (its program compiled once, then cached).
  auto pooled_on_thread = [&](bool filtered) -> std::optional<double> {
    if (!master->prewarm(*system, 1)) return std::nullopt;
    bool ok = false;
    const auto start = Clock::now();
    std::thread monitor([&] {
      if (filtered && !install_monitor_filter()) return;
      auto fork = master->fork(*system);
      ok = fork && serve_one(*fork);
    });
    monitor.join();
    if (!ok) return std::nullopt;
    return us_since(start);
  };
  rows.push_back({"microVM pooled fork on a new thread", [&] { return pooled_on_thread(false); }});
  rows.push_back({"  the same, the thread under the monitor's seccomp table", [&] { return pooled_on_thread(true); }});
  rows.push_back({"microVM reset + reuse (same VM and vCPU)", [&]() -> std::optional<double> {
    const auto start = Clock::now();
    if (!reused->reset() || !serve_one(*reused)) return std::nullopt;
    return us_since(start);
  }});
  // The start alone, without the request's own work (page faults and CoW copies included).
  rows.push_back({"  of which the pooled fork alone (no request)", [&]() -> std::optional<double> {
    if (!master->prewarm(*system, 1)) return std::nullopt;
    const auto start = Clock::now();
    auto fork = master->fork(*system);
    if (!fork) return std::nullopt;
    return us_since(start);
  }});
  rows.push_back({"  of which the reset alone (no request)", [&]() -> std::optional<double> {
    const auto start = Clock::now();
    if (!reused->reset()) return std::nullopt;
    const double us = us_since(start);
    return serve_one(*reused) ? std::optional<double>(us) : std::nullopt;  // leaves it used for the next reset
  }});
  measure(rows, n, kRounds);

  // Per syscall: the loop guest's round trips, and the same syscall made natively.
  std::vector<double> guest_trips;
  std::vector<double> native;
  std::size_t loop_failures = 0;
  for (std::size_t round = 0; round < kRounds; ++round) {
    if (!syscall_round_trips(*system, loop_elf, guest_trips)) ++loop_failures;
    native_syscalls(native);
  }

  std::printf("microVM start and syscall costs; %zu runs per row in %zu alternating rounds\n", n, kRounds);
  std::printf("environment: %s\n", env.description.c_str());
  std::printf("guest %s; master VM booted to its first read in %.1f ms (once)\n\n", guest_path.c_str(), master_ms);
  if (!jail) std::printf("process jail unavailable here: %s (no ratios)\n\n", jail.error().message.c_str());
  if (!microvm) std::printf("microvm jail unavailable here: %s\n\n", microvm.error().message.c_str());
  std::vector<LatencySummary> summaries;
  for (const Row& row : rows) summaries.push_back(summarize(row.samples));
  const double jail_median = jail ? summaries[0].median_us : 0;
  std::printf("%-58s %11s %11s %10s %7s\n", "start to the first result of \"return 1\"", "median us", "p99 us",
              "/ jail", "failed");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].available) print_row(rows[i].name, summaries[i], jail_median, rows[i].failures);
  }
  const LatencySummary native_summary = summarize(native);
  std::printf("\n%-58s %11s %11s %10s %7s\n", "per syscall", "median us", "p99 us", "/ native", "failed");
  print_row("microVM guest clock_gettime (exit, dispatch, re-entry)", summarize(guest_trips),
            native_summary.median_us, loop_failures);
  print_row("native clock_gettime syscall in this process", native_summary, native_summary.median_us, 0);
  if (env.emulated) {
    std::printf("\nEMULATED: these figures come from a nested QEMU guest under TCG; absolute values mean little.\n");
  }
  return 0;
}
