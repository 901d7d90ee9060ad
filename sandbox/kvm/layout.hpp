// The microVM's memory layout: where the monitor puts the x86 system structures, the entry
// stub and the guest's regions, in guest-physical (GPA) and guest-virtual (GVA) addresses.
// docs/microvm.md draws the same map.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sojourn::sandbox::kvm {

inline constexpr std::uint64_t kPageSize = 4096;

// Guest physical memory: the first pages hold the system structures, identity-mapped
// (GVA == GPA) and supervisor-only; every page above kFirstFreePage is handed out on demand
// (page tables, ELF segments, stack, brk, mmap) by the PhysicalPages allocator.
inline constexpr std::uint64_t kGdtAddress = 0x1000;         // 8 descriptors (TSS takes two)
inline constexpr std::uint64_t kIdtAddress = 0x2000;         // 256 gates of 16 bytes: one page
inline constexpr std::uint64_t kTssAddress = 0x3000;         // the 64-bit TSS (104 bytes)
inline constexpr std::uint64_t kStubAddress = 0x4000;        // syscall entry + exception stubs (ring 0, X)
inline constexpr std::uint64_t kRing0StackTop = 0x6000;      // RSP0: exceptions from ring 3 (page 0x5000)
inline constexpr std::uint64_t kIstStackTop = 0x7000;        // IST1: #DF, NMI, #MC (page 0x6000)
inline constexpr std::uint64_t kPml4Address = 0x7000;        // CR3
inline constexpr std::uint64_t kFirstFreePage = 0x8000;
inline constexpr std::uint64_t kSystemEnd = kFirstFreePage;  // [kGdtAddress, kSystemEnd): supervisor pages

// Guest virtual layout of the user half (ring 3 only ever sees these).
inline constexpr std::uint64_t kUserLowest = 0x10000;                 // nothing maps below (null guard)
inline constexpr std::uint64_t kUserEnd = 0x0000'8000'0000'0000;      // end of the canonical lower half
// No region may reach the last page below kUserEnd (Linux keeps it unmapped for the same
// reason): a `syscall` in its last bytes would leave RCX = kUserEnd, non-canonical, and
// `sysretq` with a non-canonical RCX faults in ring 0 on Intel.
inline constexpr std::uint64_t kUserMapEnd = kUserEnd - kPageSize;
inline constexpr std::uint64_t kStackTop = 0x0000'7fff'ffff'f000;     // initial RSP is below this
inline constexpr std::uint64_t kStackBytes = std::uint64_t{8} << 20;  // reserved, backed on touch
inline constexpr std::uint64_t kMmapTop = kStackTop - kStackBytes - (std::uint64_t{1} << 30);  // gap below the stack
inline constexpr std::uint64_t kBrkMaxBytes = std::uint64_t{1} << 30; // brk may grow this far past the image

// What a guest may reserve, so the monitor's work for it stays bounded (docs/microvm.md,
// "Bounds on the monitor's work"). Reserved address space: a floor for the guest runtime's
// fixed reservations (its 8 GiB C++ heap, 1 GiB of brk, the stack, the image, the JIT) plus
// a multiple of guest memory (the Lua arena is twice the memory quota plus 1 MiB).
inline constexpr std::uint64_t kReserveFloorBytes = std::uint64_t{16} << 30;
inline constexpr std::uint64_t kReservePerMemoryByte = 4;
constexpr std::uint64_t reserve_limit_for(std::uint64_t memory_bytes) noexcept {
  return kReserveFloorBytes + kReservePerMemoryByte * memory_bytes;
}
// Regions (after adjacent ones with the same protection are merged): the guest runtime uses
// a few dozen; each costs the monitor one node of heap.
inline constexpr std::size_t kMaxRegions = 4096;

// I/O ports the ring-0 stubs write to; each `out` is one KVM_EXIT_IO for the monitor.
inline constexpr std::uint16_t kSyscallPort = 0x5c;       // the guest made a syscall
inline constexpr std::uint16_t kSyscallFlushPort = 0x5d;  // the stub has reloaded CR3 after a map change
inline constexpr std::uint16_t kExceptionPortBase = 0xe0; // vector V (0..31) writes port 0xe0 + V

// GDT selectors; the order is the one SYSCALL/SYSRET require (see long_mode.cpp).
inline constexpr std::uint16_t kKernelCodeSelector = 0x08;
inline constexpr std::uint16_t kKernelDataSelector = 0x10;
inline constexpr std::uint16_t kUserCode32Selector = 0x18;  // never used, anchors STAR[63:48]
inline constexpr std::uint16_t kUserDataSelector = 0x20 | 3;
inline constexpr std::uint16_t kUserCodeSelector = 0x28 | 3;
inline constexpr std::uint16_t kTssSelector = 0x30;

}  // namespace sojourn::sandbox::kvm
