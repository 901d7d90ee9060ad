// Fast start on real KVM: a master VM boots the real sojourn-guest up to its first channel
// read; forks of it answer a REV, stay isolated from each other and from the master, and a
// reset returns one to pristine. Prints start-up timings (emulated nested-QEMU figures there).
// Needs /dev/kvm: it runs in the kvm_tests entry. Prints PASS or FAIL; exit 0 only on PASS.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "sandbox/kvm/boot.hpp"
#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/fork.hpp"
#include "sandbox/kvm/harness/one_request.hpp"
#include "sandbox/process/guest_wire.hpp"
#include "sandbox/microvm/monitor_errors.hpp"

using namespace sojourn::sandbox::kvm;
namespace channel = sojourn::sandbox::channel;
using sojourn::sandbox::kvm::harness::OneRequest;

namespace {
constexpr std::uint64_t kMemoryBytes = 64ULL << 20;
constexpr std::uint64_t kBudgetMs = 20'000;
using Clock = std::chrono::steady_clock;

int fail(const std::string& why) {
  std::printf("FAIL kvm_fork_test: %s\n", why.c_str());
  return 1;
}

// The file, or nothing (the caller reports an empty guest).
std::vector<std::byte> read_elf(const std::string& path) {
  auto bytes = read_elf_file(path);
  return bytes ? std::move(*bytes) : std::vector<std::byte>{};
}

// Serves `source` in `fork`; its integer result or the error's text.
sojourn::Result<std::int64_t> ask(MicroVmFork& fork, const std::string& source) {
  OneRequest request(source);
  auto status = fork.serve(request.end, kBudgetMs);
  if (!status) return sojourn::sandbox::wire_error(status.error());
  return request.integer_result();
}

// A cheap fingerprint of the guest pages in use (system area, tables, every backed page).
std::uint64_t fingerprint(const GuestMemory& memory, std::uint64_t bytes) {
  auto all = memory.span(0, bytes);
  std::uint64_t hash = 1469598103934665603ULL;
  for (std::size_t i = 0; i < all->size(); i += 8) {
    std::uint64_t word = 0;
    std::memcpy(&word, all->data() + i, 8);
    hash = (hash ^ word) * 1099511628211ULL;
  }
  return hash;
}

double median_ms(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

StackInputs serve_stack() {
  StackInputs stack{{"sojourn-guest", "--serve"}, {}, {}};
  host_random(std::as_writable_bytes(std::span(stack.random)));
  return stack;
}

// From scratch: memory, boot, VM, vCPU, and the whole guest start-up, to the first result.
sojourn::Result<std::int64_t> from_scratch(const KvmSystem& system, std::span<const std::byte> elf) {
  return sojourn::sandbox::kvm::harness::run_from_scratch(system, elf, "return 1+1", kMemoryBytes, kBudgetMs);
}
}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::byte> elf = read_elf(argc > 1 ? argv[1] : SOJOURN_GUEST_ELF);
  if (elf.empty()) return fail("cannot read the guest");
  auto system = KvmSystem::open();
  if (!system) return fail(system.error().message());

  const auto master_start = Clock::now();
  auto master = MasterVm::boot(*system, elf, serve_stack(), kMemoryBytes, kBudgetMs);
  if (!master) return fail("master: " + master.error().message());
  const double master_ms = ms_since(master_start);
  master->set_fork_reseeding(false);  // 1-5 compare forks with the master byte for byte; 6 reseeds
  const std::uint64_t master_print = fingerprint(master->memory(), kMemoryBytes);
  std::printf("ok: the master VM paused at its first channel read (%.1f ms)\n", master_ms);

  // 1. A fork answers a REV; a second request without a reset is refused.
  auto a = master->fork(*system);
  if (!a) return fail("fork a: " + a.error().message());
  auto two = ask(*a, "return 1+1");
  if (!two || *two != 2) return fail("fork a, return 1+1: " + (two ? std::to_string(*two) : two.error().message));
  if (a->vcpu_state() != VcpuState::finished) return fail("fork a's vCPU did not finish");
  std::printf("ok: a fork answers return 1+1 = 2\n");
  auto refused = ask(*a, "return 1");
  const std::string expected_refusal =
      "microVM master: a fork serves one request; reset it first (its vCPU is finished)";
  if (refused || refused.error().code != sojourn::Errc::vm_master ||
      refused.error().message.find("serves one request") == std::string::npos) {
    return fail("a second serve was not refused");
  }
  std::printf("ok: %s\n", expected_refusal.c_str());

  // 2. CoW isolation. The whole run of fork a wrote stack, heap and arena pages: the master
  // and a fork made afterwards still see the master's bytes.
  if (fingerprint(master->memory(), kMemoryBytes) != master_print) return fail("fork a's run changed the master");
  auto b = master->fork(*system);
  if (!b) return fail("fork b: " + b.error().message());
  if (fingerprint(b->memory(), kMemoryBytes) != master_print) return fail("fork b does not start as the master");
  // Raw writes through the monitor's accessors: one into a page the master wrote (the TSS
  // page), one into a page it never touched (the last one).
  constexpr std::uint64_t kWrittenPage = 0x3000 + 2048;
  const std::uint64_t untouched_page = kMemoryBytes - 4096;
  const std::uint64_t master_word = master->memory().read_u64(kWrittenPage).value();
  constexpr std::uint64_t kMarker = 0x5eed'f00d'cafe'0001ULL;
  if (!a->memory().write_u64(kWrittenPage, kMarker) || !a->memory().write_u64(untouched_page, kMarker)) {
    return fail("raw write into fork a");
  }
  if (a->memory().read_u64(kWrittenPage).value() != kMarker) return fail("fork a does not see its own write");
  if (b->memory().read_u64(kWrittenPage).value() != master_word || b->memory().read_u64(untouched_page).value() != 0) {
    return fail("fork b sees fork a's write");
  }
  if (master->memory().read_u64(kWrittenPage).value() != master_word ||
      master->memory().read_u64(untouched_page).value() != 0) {
    return fail("the master sees fork a's write");
  }
  auto seven = ask(*b, "local t = {} for i = 1, 100 do t[i] = i end return #t - 93");
  if (!seven || *seven != 7) return fail("fork b: " + (seven ? std::to_string(*seven) : seven.error().message));
  if (a->memory().read_u64(kWrittenPage).value() != kMarker) return fail("fork b's run changed fork a");
  std::printf("ok: CoW isolation: writes in one fork are seen by neither the other fork nor the master\n");

  // 3. Reset: fork a is pristine again (its writes are gone) and answers again.
  if (auto reset = a->reset(); !reset) return fail("reset: " + reset.error().message());
  if (a->vcpu_state() != VcpuState::created) return fail("a reset fork's vCPU is not created");
  if (a->memory().read_u64(kWrittenPage).value() != master_word || a->memory().read_u64(untouched_page).value() != 0) {
    return fail("reset kept fork a's raw writes");
  }
  if (fingerprint(a->memory(), kMemoryBytes) != master_print) return fail("reset fork a differs from the master");
  two = ask(*a, "return 1+1");
  if (!two || *two != 2) return fail("reset fork a: " + (two ? std::to_string(*two) : two.error().message));
  std::printf("ok: reset returns a fork to pristine, and it answers again\n");

  // 4. Timings to the first result, median of 3 (each also checks the answer).
  std::vector<double> scratch, forked, fork_only, reset_run, reset_only;
  for (int i = 0; i < 3; ++i) {
    auto start = Clock::now();
    auto r = from_scratch(*system, elf);
    if (!r || *r != 2) return fail("from scratch: " + (r ? std::to_string(*r) : r.error().message));
    scratch.push_back(ms_since(start));

    start = Clock::now();
    auto f = master->fork(*system);
    if (!f) return fail("fork: " + f.error().message());
    fork_only.push_back(ms_since(start));
    r = ask(*f, "return 1+1");
    if (!r || *r != 2) return fail("fork: " + (r ? std::to_string(*r) : r.error().message));
    forked.push_back(ms_since(start));

    start = Clock::now();
    if (auto reset = f->reset(); !reset) return fail("reset: " + reset.error().message());
    reset_only.push_back(ms_since(start));
    r = ask(*f, "return 1+1");
    if (!r || *r != 2) return fail("reset: " + (r ? std::to_string(*r) : r.error().message));
    reset_run.push_back(ms_since(start));
  }
  // 5. The VM pool: a fork's VM and vCPU, recycled, serve the next fork (a vCPU that ended
  // in exit_group, with new memory); a prewarmed pool spares a fork its KVM_CREATE_VM.
  std::vector<double> pooled_fork, pooled_run;
  for (int i = 0; i < 3; ++i) {
    if (master->pooled() == 0) {
      if (auto warm = master->prewarm(*system, 1); !warm) return fail("prewarm: " + warm.error().message());
    }
    const auto start = Clock::now();
    auto f = master->fork(*system);
    if (!f) return fail("pooled fork: " + f.error().message());
    pooled_fork.push_back(ms_since(start));
    auto r = ask(*f, "return 1+1");
    if (!r || *r != 2) return fail("pooled fork: " + (r ? std::to_string(*r) : r.error().message));
    pooled_run.push_back(ms_since(start));
    if (auto kept = master->recycle(std::move(*f)); !kept) return fail("recycle: " + kept.error().message());
    if (master->pooled() != 1) return fail("the recycled VM is not in the pool");
  }
  std::printf("ok: recycled and prewarmed VMs serve new forks\n");

  // 6. Reseeding: each fork (and each reset) gets its own stack-protector canary, written
  // in the TCB and over the paused frames' copies, and still answers.
  master->set_fork_reseeding(true);
  auto canary_of = [](MicroVmFork& fork) {
    std::uint64_t canary = 0;
    fork.state().space.copy_from_guest(fork.memory(), fork.state().fs_base + kTcbStackGuardOffset,
                                       std::as_writable_bytes(std::span(&canary, 1)));
    return canary;
  };
  std::uint64_t master_canary = 0;
  {
    const std::uint64_t at = master->state().fs_base + kTcbStackGuardOffset;
    auto found = master->state().space.tables().translate(master->memory(), at);
    if (found && *found) {
      auto word = master->memory().read_u64((*found)->gpa);
      if (word) master_canary = *word;
    }
  }
  auto c = master->fork(*system);
  auto d = master->fork(*system);
  if (!c || !d) return fail("reseeded forks");
  const std::uint64_t c_canary = canary_of(*c);
  const std::uint64_t d_canary = canary_of(*d);
  // The copies on the paused stack are those of live frames that carry a canary. The guest's
  // own code is built with -fstack-protector-strong, so at the first channel read its serving
  // frames (main down to the read) hold copies: there must be some. Both forks of one master
  // find the same copies, and a copy left stale in a live frame would abort the fork when
  // that frame returns (__stack_chk_fail), which the requests below would show.
  if (master_canary == 0 || c_canary == master_canary || d_canary == master_canary || c_canary == d_canary ||
      c_canary != c->secrets().new_canary || c->secrets().stack_copies == 0 ||
      c->secrets().stack_copies != d->secrets().stack_copies) {
    return fail("reseeding: canaries " + std::to_string(master_canary) + " " + std::to_string(c_canary) + " " +
                std::to_string(d_canary) + ", " + std::to_string(c->secrets().stack_copies) + " stack copies");
  }
  for (MicroVmFork* f : {&*c, &*d}) {
    auto r = ask(*f, "local s = string.rep('x', 1000) return #s");
    if (!r || *r != 1000) return fail("reseeded fork: " + (r ? std::to_string(*r) : r.error().message));
  }
  if (auto reset = c->reset(); !reset) return fail("reseeded reset: " + reset.error().message());
  if (canary_of(*c) == c_canary || canary_of(*c) == master_canary) return fail("a reset kept its canary");
  auto again = ask(*c, "return 1+1");
  if (!again || *again != 2) return fail("reseeded reset fork: " + (again ? std::to_string(*again) : again.error().message));
  std::printf("ok: reseeded forks: own canaries (%zu copies on the paused stack rewritten), and they answer\n",
              c->secrets().stack_copies);

  std::printf("timings (median of 3, ms; under nested QEMU these are emulated figures):\n");
  std::printf("  master boot to its first read       %8.2f (once)\n", master_ms);
  std::printf("  from scratch to the first result    %8.2f\n", median_ms(scratch));
  std::printf("  fork (new VM + vCPU, CoW memory)    %8.2f\n", median_ms(fork_only));
  std::printf("  fork to the first result            %8.2f\n", median_ms(forked));
  std::printf("  fork from the VM pool               %8.2f\n", median_ms(pooled_fork));
  std::printf("  pooled fork to the first result     %8.2f\n", median_ms(pooled_run));
  std::printf("  reset (same VM and vCPU)            %8.2f\n", median_ms(reset_only));
  std::printf("  reset to the first result           %8.2f\n", median_ms(reset_run));

  std::printf("PASS kvm_fork_test\n");
  return 0;
}
