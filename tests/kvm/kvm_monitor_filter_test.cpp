// The monitor's seccomp table on real KVM: threads that installed it boot a master, serve its
// forks (a REV, a reset, the VM pool) and stop a spinning guest with the budget timer, so the
// table covers every path they take. A call missing from the table ends this process with
// SIGSYS and a line naming it. Needs /dev/kvm: it runs in the kvm_tests entry.
// Prints PASS or FAIL; exit 0 only on PASS.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/kvm/boot.hpp"
#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/fork.hpp"
#include "sandbox/kvm/harness/one_request.hpp"
#include "sandbox/kvm/monitor_filter.hpp"
#include "sandbox/microvm/monitor_errors.hpp"

using namespace sojourn::sandbox::kvm;
using sojourn::sandbox::kvm::harness::OneRequest;

namespace {
constexpr std::uint64_t kMemoryBytes = 64ULL << 20;
constexpr std::uint64_t kBudgetMs = 20'000;

// The file, or nothing (the caller reports an empty guest).
std::vector<std::byte> read_elf(const std::string& path) {
  auto bytes = read_elf_file(path);
  return bytes ? std::move(*bytes) : std::vector<std::byte>{};
}

std::string describe(const sojourn::Result<std::int64_t>& r) { return r ? std::to_string(*r) : r.error().message; }

// The budget's end as a peer sees it: the deadline code, naming the budget.
bool is_deadline(const sojourn::Result<std::int64_t>& r, std::uint64_t budget_ms) {
  return !r && r.error().code == sojourn::Errc::deadline &&
         r.error().message.find(std::to_string(budget_ms) + " ms") != std::string::npos;
}

sojourn::Result<std::int64_t> ask(MicroVmFork& fork, const std::string& source, std::uint64_t budget_ms = kBudgetMs) {
  OneRequest request(source, sojourn::Limits{1ULL << 50, 8u << 20, 600'000});
  auto status = fork.serve(request.end, budget_ms);
  if (!status) return sojourn::sandbox::wire_error(status.error());
  return request.integer_result();
}

// A boot from scratch to the first result (memfd, KVM_GET_SUPPORTED_CPUID, set_up): the boot rows.
sojourn::Result<std::int64_t> from_scratch(const KvmSystem& system, std::span<const std::byte> elf) {
  return sojourn::sandbox::kvm::harness::run_from_scratch(system, elf, "return 40+2", kMemoryBytes, kBudgetMs);
}

// What the filtered threads saw, printed by the main thread: stdio's first write to stdout
// fstat()s it, which the table refuses (a monitor thread logs to stderr, unbuffered).
std::vector<std::string> g_seen;

// Runs `body` on a new thread that installed the filter first; its error text, "" on success.
template <class Body>
std::string on_filtered_thread(const MonitorFilterOptions& options, Body body) {
  std::string failure;
  std::thread monitor([&] {
    if (auto installed = install_monitor_filter(options); !installed) {
      failure = "install: " + installed.error().message();
      return;
    }
    failure = body();
  });
  monitor.join();
  for (const auto& line : g_seen) std::printf("ok: %s\n", line.c_str());
  g_seen.clear();
  return failure;
}

int fail(const std::string& why) {
  std::printf("FAIL kvm_monitor_filter_test: %s\n", why.c_str());
  return 1;
}
}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::byte> elf = read_elf(argc > 1 ? argv[1] : SOJOURN_GUEST_ELF);
  if (elf.empty()) return fail("cannot read the guest");
  auto system = KvmSystem::open();  // before any filter: open() is not in the table
  if (!system) return fail(system.error().message());
  std::optional<MasterVm> master;

  // 1. The full table (boot rows included): a master boots, a fork answers, a reset fork
  // answers again, a spinning fork is stopped by the budget timer, and a boot from scratch.
  std::string failure = on_filtered_thread(MonitorFilterOptions{}, [&]() -> std::string {
    StackInputs stack{{"sojourn-guest", "--serve"}, {}, {}};
    host_random(std::as_writable_bytes(std::span(stack.random)));
    auto booted = MasterVm::boot(*system, elf, stack, kMemoryBytes, kBudgetMs);
    if (!booted) return "master: " + booted.error().message();
    master.emplace(std::move(*booted));
    g_seen.push_back("under the filter: a master VM booted to its first read");

    auto fork = master->fork(*system);
    if (!fork) return "fork: " + fork.error().message();
    auto two = ask(*fork, "return 1+1");
    if (!two || *two != 2) return "fork, return 1+1: " + describe(two);
    if (auto reset = fork->reset(); !reset) return "reset: " + reset.error().message();
    auto three = ask(*fork, "return 1+2");
    if (!three || *three != 3) return "reset fork, return 1+2: " + describe(three);
    g_seen.push_back("under the filter: a fork answers return 1+1, and again after a reset");

    if (auto reset = fork->reset(); !reset) return "reset: " + reset.error().message();
    auto spin = ask(*fork, "while true do end", 300);
    if (spin || !is_deadline(spin, 300)) return "spin: " + describe(spin);
    g_seen.push_back("under the filter: the budget timer stops a spinning guest: " + spin.error().message);

    auto scratch = from_scratch(*system, elf);
    if (!scratch || *scratch != 42) return "from scratch: " + describe(scratch);
    g_seen.push_back("under the filter: a microVM booted from scratch answers return 40+2");
    if (auto kept = master->recycle(std::move(*fork)); !kept) return "recycle: " + kept.error().message();
    return "";
  });
  if (!failure.empty()) return fail(failure);

  // 2. A thread that serves forks only: no boot rows, read/write on stderr alone. It takes
  // the pooled VM, makes a new one, prewarms the pool, and stops a spinning guest.
  MonitorFilterOptions serve_only;
  serve_only.allow_boot = false;
  serve_only.channel_fds = {2};
  failure = on_filtered_thread(serve_only, [&]() -> std::string {
    for (int i = 0; i < 2; ++i) {  // the pooled VM, then a new KVM_CREATE_VM
      auto fork = master->fork(*system);
      if (!fork) return "fork: " + fork.error().message();
      auto r = ask(*fork, "local t = {} for i = 1, 50 do t[i] = i end return #t");
      if (!r || *r != 50) return "serve-only fork: " + describe(r);
    }
    if (auto warm = master->prewarm(*system, 1); !warm) return "prewarm: " + warm.error().message();
    auto fork = master->fork(*system);
    if (!fork) return "pooled fork: " + fork.error().message();
    auto spin = ask(*fork, "local x = 0 while true do x = x + 1 end", 300);
    if (spin || !is_deadline(spin, 300)) return "spin: " + describe(spin);
    return "";
  });
  if (!failure.empty()) return fail(failure);
  std::printf("ok: under the serve-only filter: pooled and new forks answer, a spinning fork is stopped\n");

  std::printf("PASS kvm_monitor_filter_test\n");
  return 0;
}
