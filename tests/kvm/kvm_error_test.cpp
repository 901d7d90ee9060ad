// Tests of the monitor's own errors (sandbox/kvm/kvm_error.hpp) and of their one mapping to the
// wire's errors at the microVM jail's boundary (sandbox/microvm/monitor_errors.hpp).
#include <doctest/doctest.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "sandbox/kvm/kvm_error.hpp"
#include "sandbox/microvm/monitor_errors.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn::sandbox::kvm;
using sojourn::Errc;
using sojourn::sandbox::wire_code;
using sojourn::sandbox::wire_error;

namespace {
constexpr Cause kCauses[] = {Cause::unavailable, Cause::bad_elf,      Cause::guest_memory, Cause::memory_full,
                             Cause::ioctl,       Cause::guest_fault,  Cause::entry_failed, Cause::vcpu_state,
                             Cause::master,      Cause::filter,       Cause::budget,       Cause::bug};
}  // namespace

TEST_CASE("a monitor error's message carries its detail, and the errno's text when a system call failed") {
  const Error plain = fail(Cause::guest_fault, "#UD (invalid opcode) at rip 0x401000");
  CHECK(plain.sys_errno == 0);
  CHECK_ERROR(plain, Cause::guest_fault, "microVM guest fault", "#UD", "rip 0x401000");
  CHECK(plain.message().find(std::strerror(EINTR)) == std::string::npos);

  const Error refused = fail_errno(Cause::ioctl, "KVM_CREATE_VM", EACCES);
  CHECK(refused.sys_errno == EACCES);
  CHECK_ERROR(refused, Cause::ioctl, "KVM_CREATE_VM", std::strerror(EACCES));
  // libseccomp returns negated errno values: the error keeps the positive one.
  CHECK(fail_errno(Cause::filter, "export", -ENOMEM).sys_errno == ENOMEM);
}

TEST_CASE("the limits a run reached are fields of the error and appear in its message") {
  const Error full = over_limit(Cause::memory_full, 65536);
  CHECK(full.limit == 65536);
  CHECK_ERROR(full, Cause::memory_full, "65536 bytes");
  const Error late = over_limit(Cause::budget, 250);
  CHECK(late.limit == 250);
  CHECK_ERROR(late, Cause::budget, "250 ms");
}

TEST_CASE("every cause has its own name and a message of its own") {
  std::set<std::string_view> names;
  std::set<std::string> messages;
  for (Cause cause : kCauses) {
    names.insert(cause_name(cause));
    messages.insert(fail(cause, "x").message());
  }
  CHECK(names.size() == std::size(kCauses));
  CHECK(messages.size() == std::size(kCauses));
  CHECK(cause_name(Cause::none) == "none");
}

TEST_CASE("a Result of the monitor holds a value or a monitor error") {
  Result<int> value = 3;
  REQUIRE(value.ok());
  CHECK(*value == 3);
  Result<int> failed = fail(Cause::master, "no first request");
  CHECK_FALSE(failed.ok());
  CHECK_ERROR(failed, Cause::master, "no first request");
  Result<void> done;
  CHECK(done.ok());
  Result<void> refused = fail(Cause::vcpu_state, "finished to running");
  CHECK_ERROR(refused, Cause::vcpu_state, "finished to running");
}

TEST_CASE("at the jail's boundary each cause becomes its wire code, with the monitor's words") {
  CHECK(wire_code(Cause::unavailable) == Errc::kvm_unavailable);
  CHECK(wire_code(Cause::bad_elf) == Errc::bad_elf);
  CHECK(wire_code(Cause::guest_memory) == Errc::guest_memory);
  CHECK(wire_code(Cause::memory_full) == Errc::memory_limit);
  CHECK(wire_code(Cause::ioctl) == Errc::vm_setup_failed);
  CHECK(wire_code(Cause::guest_fault) == Errc::vm_guest_fault);
  CHECK(wire_code(Cause::entry_failed) == Errc::vm_entry_failed);
  CHECK(wire_code(Cause::vcpu_state) == Errc::vm_state);
  CHECK(wire_code(Cause::master) == Errc::vm_master);
  CHECK(wire_code(Cause::filter) == Errc::monitor_filter);
  CHECK(wire_code(Cause::budget) == Errc::deadline);
  CHECK(wire_code(Cause::bug) == Errc::internal);

  const Error fault = fail(Cause::guest_fault, "read unmapped memory at 0xdead000");
  const sojourn::Error wire = wire_error(fault);
  CHECK_ERROR(wire, Errc::vm_guest_fault, "0xdead000");
  CHECK(wire.message == fault.message());
  // A full guest is the same error a peer sees from the other jails' memory limit.
  CHECK_ERROR(wire_error(over_limit(Cause::memory_full, 1 << 20)), Errc::memory_limit, "1048576 bytes");
}
