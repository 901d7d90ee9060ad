// Shared by the monitor's unit tests: a small guest memory with the system tables written.
#pragma once

#include <doctest/doctest.h>

#include <cstddef>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/long_mode.hpp"
#include "sandbox/kvm/syscall_table.hpp"

namespace kvm_test {

using namespace sojourn::sandbox::kvm;

inline constexpr std::uint64_t kTestMemoryBytes = 16ULL << 20;

struct TestVm {
  GuestMemory memory;
  GuestState state;

  explicit TestVm(std::uint64_t bytes = kTestMemoryBytes) : memory(std::move(GuestMemory::create(bytes).value())), state(bytes) {
    REQUIRE(write_system_tables(memory, state.space).ok());
  }
};

inline std::vector<std::byte> read_file(const std::string& path) {
  auto bytes = read_elf_file(path);
  REQUIRE_MESSAGE(bytes.ok(), (bytes.ok() ? "" : bytes.error().message()));
  return std::move(*bytes);
}

inline std::vector<std::byte> guest_elf() { return read_file(SOJOURN_GUEST_ELF); }

template <class T>
std::span<const std::byte> bytes_of(const T& value) {
  return std::as_bytes(std::span(&value, 1));
}

}  // namespace kvm_test
