// Tests of the warm pool's resident-memory check (resident_fit): statm is read when the
// guest's CPU time since the last reading could have made pages resident, and a reading over
// the cap makes the guest unfit. The "guest" here is this test process's own statm.
#include <doctest/doctest.h>

#include <fcntl.h>

#include <cstdint>
#include <optional>

#include "sandbox/process/guest_pool.hpp"

namespace {

using sojourn::sandbox::kResidentCheckUs;
using sojourn::sandbox::UniqueFd;
using sojourn::sandbox::WarmGuest;

WarmGuest watched_self() {
  WarmGuest guest;
  guest.statm = UniqueFd(::open("/proc/self/statm", O_RDONLY | O_CLOEXEC));
  REQUIRE(guest.statm.valid());
  return guest;
}

constexpr std::uint64_t kNoCap = UINT64_MAX;

}  // namespace

TEST_CASE("the resident check reads statm once the guest's CPU time since the last reading allows growth") {
  WarmGuest guest = watched_self();
  // Never read: read now, whatever the clock says, and over a cap of one byte it is unfit.
  CHECK_FALSE(sojourn::sandbox::resident_fit(guest, 1000, 1));
  CHECK_FALSE(guest.resident_checked_cpu_us.has_value());
  REQUIRE(sojourn::sandbox::resident_fit(guest, 1000, kNoCap));
  CHECK(guest.resident_checked_cpu_us == 1000);
  // Within the budget of CPU time since that reading: taken as fit without a read (a cap no
  // process meets would fail a read).
  CHECK(sojourn::sandbox::resident_fit(guest, 1000 + kResidentCheckUs - 1, 1));
  // At the budget, and with an unknown or earlier clock: read again.
  CHECK_FALSE(sojourn::sandbox::resident_fit(guest, 1000 + kResidentCheckUs, 1));
  CHECK_FALSE(sojourn::sandbox::resident_fit(guest, std::nullopt, 1));
  CHECK_FALSE(sojourn::sandbox::resident_fit(guest, 999, 1));
  // A guest whose statm cannot be read (gone) is unfit once a reading is due.
  guest.statm.reset();
  CHECK(sojourn::sandbox::resident_fit(guest, 1100, kNoCap));
  CHECK_FALSE(sojourn::sandbox::resident_fit(guest, 1000 + kResidentCheckUs, kNoCap));
}

TEST_CASE("after a run, statm is read when the run took the budget's wall-clock time or the guest was never read") {
  WarmGuest guest = watched_self();
  guest.settled_cpu_us = 5000;
  // Never read: read after even a short run.
  CHECK_FALSE(sojourn::sandbox::resident_fit_after_run(guest, 1, 1));
  REQUIRE(sojourn::sandbox::resident_fit_after_run(guest, 1, kNoCap));
  // The reading counts from the run's start (the clock the host had), not from later.
  CHECK(guest.resident_checked_cpu_us == 5000);
  CHECK(sojourn::sandbox::resident_fit_after_run(guest, kResidentCheckUs - 1, 1));
  CHECK_FALSE(sojourn::sandbox::resident_fit_after_run(guest, kResidentCheckUs, 1));
}
