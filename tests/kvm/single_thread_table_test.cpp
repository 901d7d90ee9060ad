// The microVM's guest runs the process jail's guest ELF, whose C++ heap takes no lock
// (sandbox/guest/guest_heap.cpp): its syscall table must never let it make a thread.
#include <doctest/doctest.h>

#include <sys/syscall.h>

#include "sandbox/kvm/syscall_table.hpp"

using namespace sojourn::sandbox::kvm;

TEST_CASE("the microVM's syscall table has no row that makes a thread or a process") {
  for (const long nr : {long{SYS_clone}, long{SYS_clone3}, long{SYS_fork}, long{SYS_vfork}}) {
    INFO(nr);
    CHECK(syscall_name(static_cast<std::uint64_t>(nr)).empty());  // no row: -ENOSYS
  }
}
