// Tests of exit handling (a kvm_run filled in by hand, as KVM would) and of the vCPU's
// state machine.
#include <doctest/doctest.h>

#include "sandbox/kvm/layout.hpp"
#include "sandbox/kvm/vcpu_exit.hpp"
#include "sandbox/kvm/vcpu_state.hpp"
#include "tests/kvm/kvm_test_support.hpp"

using namespace sojourn::sandbox::kvm;
using sojourn::Errc;
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
  CHECK(action.error.code == Errc::vm_guest_fault);
  CHECK(action.error.message == "microVM guest fault: #UD (invalid opcode)");
  CHECK(handle_exit(io_out(0xed), {}).error.message == "microVM guest fault: #GP (general protection)");
  CHECK(handle_exit(io_out(0xe8), {}).error.message == "microVM guest fault: #DF (double fault)");
  CHECK(guest_exception_error(13, 0x401234).message == "microVM guest fault: #GP (general protection) at rip 0x401234");
}

TEST_CASE("port I/O the stubs never do ends the VM") {
  auto wide = handle_exit(io_out(kSyscallPort, 4), {});
  CHECK(wide.kind == Kind::fatal);
  CHECK(wide.error.message == "microVM guest fault: unexpected port I/O (out, port 0x5c, size 4)");
  kvm_run in = io_out(0x60);
  in.io.direction = KVM_EXIT_IO_IN;
  CHECK(handle_exit(in, {}).error.message == "microVM guest fault: unexpected port I/O (in, port 0x60, size 1)");
  CHECK(handle_exit(io_out(0x80), {}).error.message == "microVM guest fault: unexpected port I/O (out, port 0x80, size 1)");
}

TEST_CASE("hlt, a triple fault and a touch outside guest memory end the VM with what happened") {
  CHECK(handle_exit(exit_with(KVM_EXIT_HLT), {}).error.message ==
        "microVM guest fault: the vCPU halted (hlt in ring 0 after a fatal exception)");
  auto shutdown = handle_exit(exit_with(KVM_EXIT_SHUTDOWN), {});
  CHECK(shutdown.kind == Kind::fatal);
  CHECK(shutdown.error.code == Errc::vm_guest_fault);
  CHECK(shutdown.error.message == "microVM guest fault: triple fault (KVM_EXIT_SHUTDOWN)");
  kvm_run mmio = exit_with(KVM_EXIT_MMIO);
  mmio.mmio.phys_addr = 0x4000'0000;
  mmio.mmio.len = 4;
  mmio.mmio.is_write = 1;
  CHECK(handle_exit(mmio, {}).error.message ==
        "microVM guest fault: write of 4 bytes at guest-physical 0x40000000, outside guest memory");
}

TEST_CASE("entry failures and KVM internal errors are reported as entry failures") {
  kvm_run fail = exit_with(KVM_EXIT_FAIL_ENTRY);
  fail.fail_entry.hardware_entry_failure_reason = 0x21;
  fail.fail_entry.cpu = 0;
  auto action = handle_exit(fail, {});
  CHECK(action.error.code == Errc::vm_entry_failed);
  CHECK(action.error.message == "microVM entry failed: hardware entry failure reason 0x21 on cpu 0");
  kvm_run internal = exit_with(KVM_EXIT_INTERNAL_ERROR);
  internal.internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
  CHECK(handle_exit(internal, {}).error.message == "microVM entry failed: KVM internal error 1 (emulation failure)");
  CHECK(handle_exit(exit_with(999), {}).error.message == "microVM entry failed: unexpected exit reason 999");
}

TEST_CASE("an interrupted run ends the VM when the budget timer fired and resumes otherwise") {
  auto expired = handle_exit(exit_with(KVM_EXIT_INTR), ExitContext{true, 250});
  CHECK(expired.kind == Kind::fatal);
  CHECK(expired.error.code == Errc::deadline);
  CHECK(expired.error.message == "wall-clock deadline of 250 ms exceeded");
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
  CHECK(again.error().code == Errc::vm_state);
  CHECK(again.error().message == "microVM vCPU cannot go from finished to running");
  CHECK(vcpu.finish().error().message == "microVM vCPU cannot go from finished to finished");
}

TEST_CASE("transitions that skip a state are refused and change nothing") {
  VcpuStateMachine vcpu;
  CHECK(vcpu.pause().error().message == "microVM vCPU cannot go from created to paused");
  CHECK(vcpu.resume().error().message == "microVM vCPU cannot go from created to running");
  CHECK(vcpu.state() == VcpuState::created);
  REQUIRE(vcpu.start().ok());
  CHECK(vcpu.start().error().message == "microVM vCPU cannot go from running to running");
  CHECK(vcpu.resume().error().message == "microVM vCPU cannot go from running to running");
  VcpuStateMachine discarded;
  CHECK(discarded.finish().ok());  // a VM dropped before it ran
}

TEST_CASE("a fork's vCPU loaded with its master's registers rewinds to created, except while running") {
  VcpuStateMachine vcpu;
  REQUIRE(vcpu.start().ok());
  auto refused = vcpu.rewind();
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message == "microVM vCPU cannot go from running to created");
  REQUIRE(vcpu.pause().ok());
  REQUIRE(vcpu.rewind().ok());  // a master's paused vCPU
  CHECK(vcpu.state() == VcpuState::created);
  REQUIRE(vcpu.start().ok());
  REQUIRE(vcpu.finish().ok());
  REQUIRE(vcpu.rewind().ok());  // a fork reset after its request
  CHECK(vcpu.state() == VcpuState::created);
  CHECK(vcpu.start().ok());
}
