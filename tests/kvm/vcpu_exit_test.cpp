// Tests of exit handling (a kvm_run filled in by hand, as KVM would) and of the vCPU's
// state machine.
#include <doctest/doctest.h>

#include "sandbox/kvm/layout.hpp"
#include "sandbox/kvm/vcpu_exit.hpp"
#include "sandbox/kvm/vcpu_state.hpp"
#include "tests/kvm/kvm_test_support.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn::sandbox::kvm;
using Kind = ExitAction::Kind;

namespace {
kvm_run io_out(std::uint16_t port, std::uint8_t size = 1) {
  kvm_run run{};
  run.exit_reason = KVM_EXIT_IO;
  run.io.direction = KVM_EXIT_IO_OUT;
  run.io.size = size;
  run.io.port = port;
  run.io.count = 1;
  return run;
}

kvm_run exit_with(std::uint32_t reason) {
  kvm_run run{};
  run.exit_reason = reason;
  return run;
}
}  // namespace

TEST_CASE("an out to the syscall ports asks for a syscall or its result") {
  CHECK(handle_exit(io_out(kSyscallPort), {}).kind == Kind::syscall);
  CHECK(handle_exit(io_out(kSyscallFlushPort), {}).kind == Kind::syscall_result);
}

TEST_CASE("an out from the page-fault stub asks the monitor to resolve the fault") {
  CHECK(handle_exit(io_out(0xee), {}).kind == Kind::page_fault);
}

TEST_CASE("an out from another exception stub ends the VM with the exception's name") {
  auto action = handle_exit(io_out(0xe6), {});
  CHECK(action.kind == Kind::fatal);
  CHECK(action.vector == 6);
  CHECK_ERROR(action.error, Cause::guest_fault, "#UD");
  CHECK_ERROR(handle_exit(io_out(0xed), {}).error, Cause::guest_fault, "#GP");
  CHECK_ERROR(handle_exit(io_out(0xe8), {}).error, Cause::guest_fault, "#DF");
  CHECK_ERROR(guest_exception_error(13, 0x401234), Cause::guest_fault, "#GP", "rip 0x401234");
}

TEST_CASE("port I/O the stubs never do ends the VM") {
  auto wide = handle_exit(io_out(kSyscallPort, 4), {});
  CHECK(wide.kind == Kind::fatal);
  CHECK_ERROR(wide.error, Cause::guest_fault, "port I/O", "out", "port 0x5c", "size 4");
  kvm_run in = io_out(0x60);
  in.io.direction = KVM_EXIT_IO_IN;
  CHECK_ERROR(handle_exit(in, {}).error, Cause::guest_fault, "in,", "port 0x60", "size 1");
  CHECK_ERROR(handle_exit(io_out(0x80), {}).error, Cause::guest_fault, "out,", "port 0x80");
}

TEST_CASE("hlt, a triple fault and a touch outside guest memory end the VM with what happened") {
  CHECK_ERROR(handle_exit(exit_with(KVM_EXIT_HLT), {}).error, Cause::guest_fault, "halted");
  auto shutdown = handle_exit(exit_with(KVM_EXIT_SHUTDOWN), {});
  CHECK(shutdown.kind == Kind::fatal);
  CHECK_ERROR(shutdown.error, Cause::guest_fault, "triple fault");
  kvm_run mmio = exit_with(KVM_EXIT_MMIO);
  mmio.mmio.phys_addr = 0x4000'0000;
  mmio.mmio.len = 4;
  mmio.mmio.is_write = 1;
  CHECK_ERROR(handle_exit(mmio, {}).error, Cause::guest_fault, "write of 4 bytes", "guest-physical 0x40000000");
}

TEST_CASE("entry failures and KVM internal errors are reported as entry failures") {
  kvm_run fail = exit_with(KVM_EXIT_FAIL_ENTRY);
  fail.fail_entry.hardware_entry_failure_reason = 0x21;
  fail.fail_entry.cpu = 0;
  auto action = handle_exit(fail, {});
  CHECK_ERROR(action.error, Cause::entry_failed, "reason 0x21", "cpu 0");
  kvm_run internal = exit_with(KVM_EXIT_INTERNAL_ERROR);
  internal.internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
  CHECK_ERROR(handle_exit(internal, {}).error, Cause::entry_failed, "internal error 1", "emulation failure");
  CHECK_ERROR(handle_exit(exit_with(999), {}).error, Cause::entry_failed, "exit reason 999");
}

TEST_CASE("an interrupted run ends the VM when the budget timer fired and resumes otherwise") {
  auto expired = handle_exit(exit_with(KVM_EXIT_INTR), ExitContext{true, 250});
  CHECK(expired.kind == Kind::fatal);
  CHECK_ERROR(expired.error, Cause::budget);
  CHECK(expired.error.limit == 250);
  CHECK(handle_exit(exit_with(KVM_EXIT_INTR), ExitContext{false, 250}).kind == Kind::resume);
}

TEST_CASE("the vCPU goes created, running, paused, running, finished and nowhere after") {
  VcpuStateMachine vcpu;
  CHECK(vcpu.state() == VcpuState::created);
  REQUIRE(vcpu.start().ok());
  REQUIRE(vcpu.pause().ok());
  CHECK(vcpu.state() == VcpuState::paused);
  REQUIRE(vcpu.resume().ok());
  REQUIRE(vcpu.finish().ok());
  CHECK(vcpu.state() == VcpuState::finished);
  auto again = vcpu.resume();
  REQUIRE_FALSE(again.ok());
  CHECK_ERROR(again, Cause::vcpu_state, "finished to running");
  CHECK_ERROR(vcpu.finish(), Cause::vcpu_state, "finished to finished");
}

TEST_CASE("transitions that skip a state are refused and change nothing") {
  VcpuStateMachine vcpu;
  CHECK_ERROR(vcpu.pause(), Cause::vcpu_state, "created to paused");
  CHECK_ERROR(vcpu.resume(), Cause::vcpu_state, "created to running");
  CHECK(vcpu.state() == VcpuState::created);
  REQUIRE(vcpu.start().ok());
  CHECK_ERROR(vcpu.start(), Cause::vcpu_state, "running to running");
  CHECK_ERROR(vcpu.resume(), Cause::vcpu_state, "running to running");
  VcpuStateMachine discarded;
  CHECK(discarded.finish().ok());  // a VM dropped before it ran
}

TEST_CASE("a fork's vCPU loaded with its master's registers rewinds to created, except while running") {
  VcpuStateMachine vcpu;
  REQUIRE(vcpu.start().ok());
  auto refused = vcpu.rewind();
  REQUIRE_FALSE(refused.ok());
  CHECK_ERROR(refused, Cause::vcpu_state, "running to created");
  REQUIRE(vcpu.pause().ok());
  REQUIRE(vcpu.rewind().ok());  // a master's paused vCPU
  CHECK(vcpu.state() == VcpuState::created);
  REQUIRE(vcpu.start().ok());
  REQUIRE(vcpu.finish().ok());
  REQUIRE(vcpu.rewind().ok());  // a fork reset after its request
  CHECK(vcpu.state() == VcpuState::created);
  CHECK(vcpu.start().ok());
}
