// The start-up secrets the forks of one master share, and the part a fork gets anew.
// A master runs glibc's start-up once; every fork then has the same:
//   - stack-protector canary (TCB, fs:0x28), from AT_RANDOM bytes 0-7;
//   - pointer guard (TCB, fs:0x30), from AT_RANDOM bytes 8-15, which mangles the function
//     pointers glibc keeps (atexit handlers, setjmp buffers);
//   - AT_RANDOM's 16 bytes themselves, on the initial stack;
//   - malloc's tcache key (a global, from getrandom at the first malloc);
//   - every address (no ASLR: the guest is a non-PIE ELF at fixed places).
// LuaJIT's PRNG is seeded per request, after the snapshot: it already differs per fork.
// reseed_fork_secrets gives a fork its own canary and AT_RANDOM bytes. The canary's copies in
// the paused frames (the stack between the master's RSP and the stack top) are rewritten with
// it, or those frames would fail their check on return. The pointer guard stays: the pointers
// mangled with it are in glibc's private structures, which the monitor cannot find reliably;
// nor is the tcache key (a symbol of the guest) or the layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/syscall_table.hpp"

namespace sojourn::sandbox::kvm {

// glibc's x86-64 thread control block, at the FS base.
inline constexpr std::uint64_t kTcbStackGuardOffset = 0x28;
inline constexpr std::uint64_t kTcbPointerGuardOffset = 0x30;

struct ReseedReport {
  std::uint64_t old_canary = 0;
  std::uint64_t new_canary = 0;
  std::size_t stack_copies = 0;  // copies of the old canary rewritten on the stack
};

// `rsp`: the paused guest's stack pointer. Errors (Cause::guest_memory) when the guest has no
// TCB yet (FS base 0) or its stack or AT_RANDOM bytes are not readable guest memory.
Result<ReseedReport> reseed_fork_secrets(GuestMemory& memory, GuestState& state, std::uint64_t rsp,
                                         const std::function<void(std::span<std::byte>)>& random);

}  // namespace sojourn::sandbox::kvm
