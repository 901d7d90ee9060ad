// The guest's syscalls, emulated by the monitor: ONE table indexed by syscall number
// (TinyKVM's way). A number without a row returns -ENOSYS to the guest; nothing a guest
// passes can crash the host. The handlers are plain functions over GuestState and
// GuestMemory, so every one of them is unit-tested without /dev/kvm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string_view>

#include "sandbox/kvm/address_space.hpp"
#include "sandbox/kvm/guest_memory.hpp"

namespace sojourn::sandbox::kvm {

// The guest's one descriptor, as in the process jail (docs/jails.md).
inline constexpr std::uint64_t kChannelFd = 3;
// Largest read/write the monitor moves per syscall; the guest loops like on a pipe.
inline constexpr std::uint64_t kMaxTransferBytes = std::uint64_t{1} << 20;

// The host side of the guest's channel; each returns bytes moved or -errno.
struct ChannelEnd {
  std::function<std::int64_t(std::span<std::byte>)> read;
  std::function<std::int64_t(std::span<const std::byte>)> write;
};

// The monitor's view of one guest process, besides its page tables and memory.
struct GuestState {
  explicit GuestState(std::uint64_t memory_bytes) : space(memory_bytes) {}

  AddressSpace space;
  std::uint64_t brk_start = 0;    // page after the ELF image
  std::uint64_t brk_current = 0;
  std::uint64_t fs_base = 0;      // ARCH_SET_FS: glibc's TLS
  std::uint64_t gs_base = 0;
  std::uint64_t clear_child_tid = 0;
  std::uint64_t robust_list = 0;
  bool jit_allowed = false;       // PROT_EXEC for LuaJIT's machine code, never with PROT_WRITE
  std::uint64_t at_random = 0;    // where AT_RANDOM's 16 bytes are (fork_secrets.hpp reseeds them)
  // Set by handlers, consumed by the run loop before it resumes the vCPU:
  bool tlb_flush_needed = false;  // a mapping was removed or narrowed: resume through the flush stub
  bool segment_bases_dirty = false;  // FS/GS base changed: KVM_SET_MSRS before resuming
  std::optional<int> exit_status;  // exit_group was called: the vCPU is finished
};

struct SyscallArgs {
  std::uint64_t number = 0;        // RAX
  std::uint64_t arg[6] = {};       // RDI, RSI, RDX, R10, R8, R9
};

struct SyscallContext {
  GuestState& state;
  GuestMemory& memory;
  ChannelEnd& channel;
  std::function<void(std::span<std::byte>)> random;  // host randomness (getrandom(2) by default)
  std::function<std::int64_t(int clock, std::uint64_t& seconds, std::uint64_t& nanoseconds)> clock;
};

// The result for RAX: a value, or -errno.
std::int64_t dispatch_syscall(SyscallContext& context, const SyscallArgs& args);

// The row's name ("mmap"), or "" for a number without a row (tests, logs, docs).
std::string_view syscall_name(std::uint64_t number) noexcept;

// Host randomness and the host clocks, the defaults for SyscallContext.
void host_random(std::span<std::byte> out);
std::int64_t host_clock(int clock, std::uint64_t& seconds, std::uint64_t& nanoseconds);

}  // namespace sojourn::sandbox::kvm
