// Tests of the boot sequence with the real guest and of the run loop's exit dispatch
// (syscalls through the stub, the flush path, page faults, fatal exceptions).
#include <doctest/doctest.h>

#include <sys/syscall.h>

#include <atomic>
#include <cerrno>

#include "sandbox/kvm/boot.hpp"
#include "sandbox/kvm/entry_stub.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/layout.hpp"
#include "tests/kvm/kvm_test_support.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn::sandbox::kvm;

namespace {
struct Booted {
  GuestMemory memory = GuestMemory::create(64ULL << 20).value();
  GuestState state{64ULL << 20};
  ChannelEnd channel;
  SyscallContext context{state, memory, channel, host_random, host_clock};
  ExitDispatcher dispatcher{context};
  BootRegisters boot;

  Booted() {
    const auto elf = kvm_test::guest_elf();
    auto booted = prepare_guest(elf, StackInputs{{"sojourn-guest", "--serve"}, {}, {}}, memory, state);
    REQUIRE(booted.ok());
    boot = *booted;
  }

  kvm_regs syscall_regs(std::uint64_t number, std::uint64_t a0 = 0, std::uint64_t a1 = 0) {
    kvm_regs regs{};
    regs.rip = kStubAddress + kSyscallEntryOffset + 2;  // just after the stub's `out`
    regs.rax = number;
    regs.rdi = a0;
    regs.rsi = a1;
    regs.rcx = 0x401234;  // the guest's return address: the monitor must not touch it
    regs.r11 = 0x202;
    return regs;
  }

  // An exception frame as the CPU pushes it on the RSP0 stack.
  kvm_regs exception_frame(bool with_error_code, std::uint64_t error_code, std::uint64_t rip, std::uint64_t cs) {
    const std::uint64_t frame[6] = {error_code, rip, cs, 0x202, 0x7ffffff000, kUserDataSelector};
    const std::uint64_t rsp = kRing0StackTop - (with_error_code ? 48 : 40);
    REQUIRE(memory.write(rsp, std::as_bytes(std::span(frame)).subspan(with_error_code ? 0 : 8)).ok());
    kvm_regs regs{};
    regs.rsp = rsp;
    return regs;
  }
};
}  // namespace

TEST_CASE("the real guest boots into memory: entry, aligned stack, brk after the image") {
  Booted vm;
  const auto elf = kvm_test::guest_elf();
  const auto image = parse_elf(elf).value();
  CHECK(vm.boot.rip == image.entry);
  CHECK(vm.boot.rsp % 16 == 0);
  CHECK(vm.state.brk_start == ((image.image_end + 4095) & ~std::uint64_t{4095}));
  CHECK(vm.state.space.tables().translate(vm.memory, vm.boot.rip).value()->access == PageAccess{true, false, true});
  CHECK(vm.state.space.tables().translate(vm.memory, kStubAddress).value()->access == PageAccess{false, false, true});
}

TEST_CASE("a syscall exit puts the result in RAX and leaves RCX and R11 for sysretq") {
  Booted vm;
  auto regs = vm.syscall_regs(SYS_getpid);
  auto outcome = vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0);
  REQUIRE(outcome.ok());
  CHECK(outcome->registers_changed);
  CHECK(static_cast<std::int64_t>(regs.rax) == -ENOSYS);
  CHECK(regs.rcx == 0x401234);
  CHECK(regs.r11 == 0x202);
  CHECK(regs.rip == kStubAddress + 2);
  regs = vm.syscall_regs(SYS_getpid);
  regs.rip = kStubAddress;  // a kernel that reports RIP at the `out` itself
  REQUIRE(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0).ok());
  CHECK(regs.rip == kStubAddress);  // unchanged: KVM skips the `out` on the next KVM_RUN
}

TEST_CASE("a syscall that changes a mapping returns through the flush stub, then gets its result") {
  Booted vm;
  auto regs = vm.syscall_regs(SYS_brk, vm.state.brk_start + 3 * kPageSize);
  REQUIRE(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0).ok());
  CHECK(regs.rip == kStubAddress + 2);  // growing needs no flush
  regs = vm.syscall_regs(SYS_brk, vm.state.brk_start);
  REQUIRE(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0).ok());
  CHECK(regs.rip == kStubAddress + kFlushReturnOffset);
  regs.rip = kStubAddress + kFlushReturnOffset + 8;  // after the flush stub's `out`
  REQUIRE(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall_result), regs, 0).ok());
  CHECK(regs.rax == vm.state.brk_start);
  auto again = vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall_result), regs, 0);
  REQUIRE_FALSE(again.ok());
  CHECK_ERROR(again, Cause::bug, "flush stub", "without a pending syscall");
}

TEST_CASE("arch_prctl asks for the MSRs and exit_group finishes the vCPU") {
  Booted vm;
  auto regs = vm.syscall_regs(SYS_arch_prctl, 0x1002, 0x700000);
  CHECK(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0)->msrs_changed);
  regs = vm.syscall_regs(SYS_exit_group, 3);
  CHECK(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0)->exit_status == std::optional<int>(3));
}

TEST_CASE("past the run's deadline, a syscall or fault exit ends the run: the monitor's work counts against the budget") {
  Booted vm;
  kvm_regs regs = vm.syscall_regs(SYS_getpid);
  std::atomic<bool> expired{true};  // the run's budget timer has fired
  vm.dispatcher.set_budget(&expired, 250);
  auto late = vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0);
  REQUIRE_FALSE(late.ok());
  CHECK_ERROR(late, Cause::budget);
  CHECK(late.error().limit == 250);
  CHECK(regs.rax == SYS_getpid);  // not emulated
  regs = vm.exception_frame(true, 0x4, 0x401000, kUserCodeSelector);
  CHECK_ERROR(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::page_fault), regs, vm.state.brk_start),
              Cause::budget);
  expired = false;
  regs = vm.syscall_regs(SYS_getpid);
  REQUIRE(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0).ok());
  CHECK(regs.rax == static_cast<std::uint64_t>(-ENOSYS));
}

TEST_CASE("a syscall exit from anywhere but the stub is a monitor error") {
  Booted vm;
  auto regs = vm.syscall_regs(SYS_getpid);
  regs.rip = 0x401000;
  CHECK_ERROR(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0), Cause::bug,
              "outside the entry stub");
}

TEST_CASE("a page fault in the guest's bss is resolved by backing the page") {
  Booted vm;
  const std::uint64_t brk_page = vm.state.brk_start;
  auto grow = vm.syscall_regs(SYS_brk, brk_page + kPageSize);
  REQUIRE(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), grow, 0).ok());
  auto regs = vm.exception_frame(true, 0x6, 0x401000, kUserCodeSelector);  // user write, not present
  CHECK(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::page_fault), regs, brk_page + 8).ok());
  CHECK(vm.state.space.tables().translate(vm.memory, brk_page).value()->access == PageAccess{true, true, false});
}

TEST_CASE("a page fault outside every region, or in ring 0, ends the VM with the address") {
  Booted vm;
  auto regs = vm.exception_frame(true, 0x4, 0x401000, kUserCodeSelector);
  auto outside = vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::page_fault), regs, 0xdead000);
  REQUIRE_FALSE(outside.ok());
  CHECK_ERROR(outside, Cause::guest_fault, "read unmapped", "0xdead000");
  regs = vm.exception_frame(true, 0x0, 0x4002, kKernelCodeSelector);
  CHECK_ERROR(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::page_fault), regs, 0x10), Cause::guest_fault,
              "#PF", "ring 0", "at 0x10", "rip 0x4002");
}

TEST_CASE("a fatal exception names the guest instruction that raised it") {
  Booted vm;
  auto regs = vm.exception_frame(false, 0, 0x40e0d0, kUserCodeSelector);
  auto ud = vm.dispatcher.dispatch(handle_exit([] {
    kvm_run run{};
    run.exit_reason = KVM_EXIT_IO;
    run.io.direction = KVM_EXIT_IO_OUT;
    run.io.size = 1;
    run.io.count = 1;
    run.io.port = 0xe6;
    return run;
  }(), {}), regs, 0);
  REQUIRE_FALSE(ud.ok());
  CHECK_ERROR(ud, Cause::guest_fault, "#UD", "rip 0x40e0d0");
  regs = vm.exception_frame(true, 0, 0x401111, kUserCodeSelector);
  CHECK_ERROR(vm.dispatcher.dispatch(ExitAction::fail(Error{}, 13), regs, 0), Cause::guest_fault, "#GP",
              "rip 0x401111");
  auto shutdown = ExitAction::fail(fail(Cause::guest_fault, "triple fault (KVM_EXIT_SHUTDOWN)"));
  CHECK(vm.dispatcher.dispatch(shutdown, regs, 0).error() == shutdown.error);
}

TEST_CASE("a master's dispatcher pauses at the first channel read without emulating it") {
  Booted vm;
  bool channel_read = false;
  vm.channel.read = [&](std::span<std::byte>) -> std::int64_t {
    channel_read = true;
    return 0;
  };
  vm.dispatcher.pause_at_channel_read();
  auto regs = vm.syscall_regs(SYS_getpid);  // other syscalls are still emulated
  auto outcome = vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0);
  REQUIRE(outcome.ok());
  CHECK_FALSE(outcome->paused);
  regs = vm.syscall_regs(SYS_read, 0, 0x10000);  // fd 0: not the channel, -EBADF as before
  REQUIRE(vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0).ok());
  CHECK(static_cast<std::int64_t>(regs.rax) == -EBADF);
  regs = vm.syscall_regs(SYS_read, kChannelFd, 0x10000);
  const kvm_regs before = regs;
  outcome = vm.dispatcher.dispatch(ExitAction::of(ExitAction::Kind::syscall), regs, 0);
  REQUIRE(outcome.ok());
  CHECK(outcome->paused);
  CHECK_FALSE(outcome->registers_changed);
  CHECK_FALSE(channel_read);
  CHECK(regs.rax == before.rax);  // still SYS_read: the fork emulates it
  CHECK(regs.rip == before.rip);
}
