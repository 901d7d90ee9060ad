// Guest physical memory: one memfd, mapped MAP_SHARED by the master VM and MAP_PRIVATE
// (copy-on-write) by each fork, with bounds-checked accessors by guest-physical address.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

// An owned file descriptor (closed once, never retried on EINTR).
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();
  int get() const noexcept { return fd_; }
  int release() noexcept { int fd = fd_; fd_ = -1; return fd; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

class GuestMemory {
 public:
  // A fresh, zeroed memory of `bytes` (a whole number of pages, at least 64 KiB).
  static Result<GuestMemory> create(std::uint64_t bytes);

  GuestMemory(GuestMemory&& other) noexcept;
  GuestMemory& operator=(GuestMemory&& other) noexcept;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  // A copy-on-write view of this memory: it starts with this memory's contents, and writes
  // on either side stay private to the fork. The master must not change after its first
  // fork (a page the fork has not written yet would show the change).
  Result<GuestMemory> fork_private() const;
  // A fork drops every page it wrote and sees the master's pages again (a master: an error).
  Result<void> reset_to_pristine();

  std::uint64_t size() const noexcept { return size_; }
  bool is_fork() const noexcept { return private_; }
  // For KVM_SET_USER_MEMORY_REGION only.
  std::uint64_t host_address() const noexcept;

  // Exactly [gpa, gpa + length) or a Cause::guest_memory error.
  Result<std::span<std::byte>> span(std::uint64_t gpa, std::uint64_t length);
  Result<std::span<const std::byte>> span(std::uint64_t gpa, std::uint64_t length) const;
  Result<void> write(std::uint64_t gpa, std::span<const std::byte> bytes);
  Result<void> read(std::uint64_t gpa, std::span<std::byte> out) const;
  Result<void> zero(std::uint64_t gpa, std::uint64_t length);
  Result<std::uint64_t> read_u64(std::uint64_t gpa) const;
  Result<void> write_u64(std::uint64_t gpa, std::uint64_t value);

 private:
  GuestMemory(UniqueFd fd, std::byte* base, std::uint64_t size, bool is_private) noexcept
      : fd_(std::move(fd)), base_(base), size_(size), private_(is_private) {}
  Error out_of_bounds(std::uint64_t gpa, std::uint64_t length) const;

  UniqueFd fd_;
  std::byte* base_ = nullptr;
  std::uint64_t size_ = 0;
  bool private_ = false;
};

}  // namespace sojourn::sandbox::kvm
