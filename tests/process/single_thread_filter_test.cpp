// The guest's C++ heap takes no lock (sandbox/guest/guest_heap.cpp): a jailed guest must
// never be able to make a second thread, nor a process sharing its memory.
#include <doctest/doctest.h>

#include <sys/syscall.h>

#include "sandbox/guest/syscall_filter.hpp"

TEST_CASE("the guest's filter lets no thread or process be made") {
  for (const long nr : {long{SYS_clone}, long{SYS_clone3}, long{SYS_fork}, long{SYS_vfork}}) {
    for (const sojourn::sandbox::guest::SyscallRow& row : sojourn::sandbox::guest::guest_syscall_table()) {
      INFO(row.name);
      CHECK(row.nr != nr);
    }
  }
}
