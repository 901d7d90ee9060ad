// libFuzzer target: the microVM monitor's exit and syscall dispatch, without /dev/kvm. The
// input is a guest: a run of exits (syscalls with any registers, flush-stub returns, page
// faults with any exception frame and CR2, exceptions, stray exits) and writes of its own
// bytes into its memory, over a small GuestMemory with the system tables as at boot. The
// channel reads the input's bytes. Whatever the guest does, the host must answer with a
// result, a clean error or an exit status, never a crash, and never touch host memory
// outside the guest's.
#include <fuzzer/FuzzedDataProvider.h>

#include <sys/syscall.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sandbox/kvm/entry_stub.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/layout.hpp"
#include "sandbox/kvm/long_mode.hpp"
#include "sandbox/kvm/syscall_table.hpp"
#include "sandbox/kvm/vcpu_exit.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;
using namespace sojourn::sandbox::kvm;

namespace {

constexpr std::uint64_t kMemoryBytes = 2u << 20;  // little: running out of pages is part of the game
constexpr int kMaxSteps = 96;

// The syscall numbers the table has rows for, and a few it has not.
constexpr std::uint64_t kNumbers[] = {SYS_read, SYS_write, SYS_mmap, SYS_mprotect, SYS_munmap, SYS_brk, SYS_mremap,
                                      SYS_readlink, SYS_arch_prctl, SYS_futex, SYS_set_tid_address, SYS_clock_gettime,
                                      SYS_exit_group, SYS_set_robust_list, SYS_prlimit64, SYS_getrandom, SYS_rseq,
                                      SYS_openat, SYS_fork, 511, 512, ~0ULL};

struct Guest {
  FuzzedDataProvider& in;
  std::vector<std::uint64_t> addresses{kUserLowest, kMmapTop - kPageSize, kStackTop - kPageSize, 0x800000};

  // A guest-chosen value: often an address it has (to reach the handlers' deeper paths).
  std::uint64_t value() {
    switch (in.ConsumeIntegralInRange(0, 5)) {
      case 0: return in.ConsumeIntegral<std::uint64_t>();
      case 1: return in.ConsumeIntegralInRange<std::uint64_t>(0, 64);
      case 2: return static_cast<std::uint64_t>(in.ConsumeIntegralInRange<std::uint32_t>(0, 64)) * kPageSize;
      case 3: return std::uint64_t{1} << in.ConsumeIntegralInRange(0, 63);
      default: {
        const std::uint64_t base = addresses[in.ConsumeIntegralInRange<std::size_t>(0, addresses.size() - 1)];
        return base + in.ConsumeIntegralInRange<std::int64_t>(-2 * static_cast<std::int64_t>(kPageSize), 4 * kPageSize);
      }
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  auto memory = GuestMemory::create(kMemoryBytes);
  fuzz::check(memory.ok(), "guest memory");
  GuestState state(kMemoryBytes);
  fuzz::check(write_system_tables(*memory, state.space).ok(), "system tables");
  state.brk_start = state.brk_current = 0x800000;
  Guest guest{in};

  ChannelEnd channel;
  std::uint64_t written = 0;
  channel.read = [&](std::span<std::byte> out) -> std::int64_t {
    if (in.ConsumeBool()) return -11;  // EAGAIN from a host that has nothing yet
    const auto bytes = in.ConsumeBytes<std::uint8_t>(std::min<std::size_t>(out.size(), in.ConsumeIntegral<std::uint16_t>()));
    fuzz::check(bytes.size() <= out.size(), "a channel read fits its buffer");
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return static_cast<std::int64_t>(bytes.size());
  };
  channel.write = [&](std::span<const std::byte> bytes) -> std::int64_t {
    fuzz::check(bytes.size() <= kMaxTransferBytes, "a channel write is bounded");
    written += bytes.size();
    return static_cast<std::int64_t>(bytes.size());
  };
  SyscallContext context{state, *memory, channel, nullptr, nullptr};
  context.random = [](std::span<std::byte> out) { std::fill(out.begin(), out.end(), std::byte{0x5a}); };
  context.clock = [](int clock, std::uint64_t& s, std::uint64_t& ns) -> std::int64_t {
    if (clock < 0 || clock > 11) return -22;
    s = 1;
    ns = 2;
    return 0;
  };
  ExitDispatcher dispatcher(context);
  if (in.ConsumeBool()) dispatcher.pause_at_channel_read();

  kvm_regs regs{};
  for (int step = 0; step < kMaxSteps && in.remaining_bytes() > 0; ++step) {
    ExitAction action = ExitAction::of(ExitAction::Kind::resume);
    std::uint64_t cr2 = 0;
    switch (in.ConsumeIntegralInRange(0, 6)) {
      case 0:
      case 1: {  // a syscall from the entry stub (or, rarely, from anywhere)
        action = ExitAction::of(ExitAction::Kind::syscall);
        regs.rip = in.ConsumeIntegralInRange(0, 15) != 0 ? kStubAddress + kSyscallEntryOffset + (in.ConsumeBool() ? 2 : 0)
                                                         : guest.value();
        regs.rax = in.ConsumeIntegralInRange(0, 7) != 0
                       ? kNumbers[in.ConsumeIntegralInRange<std::size_t>(0, std::size(kNumbers) - 1)]
                       : in.ConsumeIntegral<std::uint64_t>();
        for (auto* r : {&regs.rdi, &regs.rsi, &regs.rdx, &regs.r10, &regs.r8, &regs.r9}) *r = guest.value();
        break;
      }
      case 2:
        action = ExitAction::of(ExitAction::Kind::syscall_result);
        break;
      case 3: {  // a page fault: an exception frame the guest may have scribbled on
        action = ExitAction::of(ExitAction::Kind::page_fault);
        regs.rsp = in.ConsumeIntegralInRange(0, 7) != 0 ? kRing0StackTop - 48 + 8 * in.ConsumeIntegralInRange(0, 4)
                                                        : guest.value();
        if (regs.rsp >= kFirstFreePage / 2 && regs.rsp + 48 <= kFirstFreePage) {
          (void)memory->write_u64(regs.rsp, in.ConsumeIntegralInRange<std::uint64_t>(0, 31));  // error code
          (void)memory->write_u64(regs.rsp + 8, guest.value());                               // rip
          (void)memory->write_u64(regs.rsp + 16, in.ConsumeBool() ? kUserCodeSelector : guest.value());  // cs
        }
        cr2 = guest.value();
        break;
      }
      case 4:  // an exception, with or without its vector
        action = in.ConsumeBool() ? ExitAction::fail(fail(Cause::guest_fault, "an exception"),
                                                     in.ConsumeIntegralInRange(0, 31))
                                  : ExitAction::fail(fail(Cause::guest_fault, "an exception"));
        regs.rsp = guest.value();
        break;
      case 5:
        break;
      case 6: {  // the guest writes its own bytes at an address of its choosing
        const std::uint64_t at = guest.value();
        const auto bytes = in.ConsumeBytes<std::byte>(in.ConsumeIntegralInRange<std::size_t>(0, 2 * kPageSize));
        (void)state.space.copy_to_guest(*memory, at, bytes);
        std::vector<std::byte> back(bytes.size());
        if (!back.empty() && state.space.copy_from_guest(*memory, at, back)) {
          fuzz::check(state.space.range_allows(at, back.size(), kProtRead), "a readable range reads");
        }
        continue;
      }
    }
    auto outcome = dispatcher.dispatch(action, regs, cr2);
    if (!outcome) {
      fuzz::check(outcome.error().cause != Cause::none && !outcome.error().message().empty(), "an ended VM says why");
      break;  // the VM is over
    }
    // Addresses the guest got back are worth poking at.
    if (action.kind == ExitAction::Kind::syscall && static_cast<std::int64_t>(regs.rax) > 0 &&
        regs.rax >= kUserLowest && regs.rax < kUserEnd && guest.addresses.size() < 32) {
      guest.addresses.push_back(regs.rax);
    }
    fuzz::check(state.brk_current >= state.brk_start, "brk never goes below its start");
    if (outcome->exit_status) break;
    if (outcome->paused) break;
  }
  return 0;
}
