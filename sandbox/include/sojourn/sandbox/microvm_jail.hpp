// The `microvm` isolation level: each run in its own KVM microVM, a copy-on-write fork of a
// master VM that booted the static sojourn-guest once, with no guest kernel: the monitor
// (sandbox/kvm) emulates the guest's few syscalls. Untrusted Lua runs inside a Lua VM inside
// the microVM. See docs/microvm.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"
#include "sojourn/sandbox/jail.hpp"

namespace sojourn::sandbox {

struct MicrovmJailOptions {
  // The sojourn-guest executable, found as ProcessJailOptions::guest_path says when empty.
  std::string guest_path;
  // Guest-physical memory of each microVM. It is a sparse memfd: only the pages a guest
  // touches cost anything. A run may ask for at most this minus kGuestOverheadBytes.
  std::uint64_t memory_bytes = (std::uint64_t{1} << 30) + (std::uint64_t{256} << 20);
  // VM shells (KVM_CREATE_VM + vCPU) made at start and kept ready for the next run.
  std::size_t pool = 2;
  // The master's boot, from the first instruction to its first channel read.
  std::uint64_t boot_budget_ms = 10'000;
  // How long after its wall-clock deadline a guest that did not stop itself is forced out.
  std::uint32_t kill_grace_ms = 50;
};

// Guest memory a run cannot use for its Lua heap: the guest's image, stacks, page tables.
inline constexpr std::uint64_t kGuestOverheadBytes = std::uint64_t{128} << 20;

struct MicrovmJailStatus {
  std::string guest_path;
  double master_boot_ms = 0;       // boot to the first request, once at start
  std::uint64_t runs = 0;          // microVMs forked
  std::uint64_t killed = 0;        // ended by the host: deadline, abort, oversized output
  std::uint64_t faults = 0;        // ended by the monitor: exceptions, wild accesses
  std::size_t pooled = 0;          // VM shells ready now
};

class MicrovmJail : public Jail {
 public:
  // Opens /dev/kvm, boots the master VM and fills the pool. Errors: kvm_unavailable (no
  // usable /dev/kvm, or one that cannot run the guest), jail_unavailable (no guest binary),
  // vm_master (the guest did not reach its first request).
  static Result<std::unique_ptr<MicrovmJail>> start(const MicrovmJailOptions& options);

  Isolation level() const final { return Isolation::microvm; }

  // run: one chunk in a fresh microVM forked for this run alone: the same results and errors
  // as run_lua, plus vm_guest_fault "microVM guest fault: ..." (an exception, a triple fault, a
  // touch outside the guest's map), vm_entry_failed, guest_crashed (the guest exited without
  // an answer). A guest past its deadline (wall_ms + kill_grace_ms: a JIT-compiled loop sees
  // no Lua hook) is forced out of the vCPU: deadline "wall-clock deadline of N ms exceeded".
  // Runs may be concurrent (each has its own monitor thread).
  // run_agent: one agent step, as ProcessJail's.

  virtual MicrovmJailStatus status() const = 0;
};

}  // namespace sojourn::sandbox
