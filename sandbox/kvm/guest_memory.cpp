// The memfd-backed guest memory and its checked accessors.
#include "sandbox/kvm/guest_memory.hpp"

#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "sandbox/kvm/hex.hpp"

namespace sojourn::sandbox::kvm {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {
constexpr std::uint64_t kMinimumBytes = 64 * 1024;

Error system_error(const char* what) {
  return fail_errno(Cause::guest_memory, what, errno);
}

Result<std::byte*> map_fd(int fd, std::uint64_t size, int flags) {
  // SAFETY: a fresh mapping of `size` bytes of our own memfd; nothing else aliases it.
  void* at = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, flags | MAP_NORESERVE, fd, 0);
  if (at == MAP_FAILED) return system_error("mmap");
  return static_cast<std::byte*>(at);
}
}  // namespace

Result<GuestMemory> GuestMemory::create(std::uint64_t bytes) {
  if (bytes < kMinimumBytes || bytes % 4096 != 0) {
    return fail(Cause::guest_memory, "size " + std::to_string(bytes) +
                                              " is not a whole number of pages of at least 65536 bytes");
  }
  UniqueFd fd(::memfd_create("sojourn-guest-memory", MFD_CLOEXEC));
  if (!fd) return system_error("memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) return system_error("ftruncate");
  auto base = map_fd(fd.get(), bytes, MAP_SHARED);
  if (!base) return base.error();
  return GuestMemory(std::move(fd), *base, bytes, false);
}

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : fd_(std::move(other.fd_)), base_(other.base_), size_(other.size_), private_(other.private_) {
  other.base_ = nullptr;
  other.size_ = 0;
}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
  if (this != &other) {
    // SAFETY: base_/size_ are our own mapping, unmapped once.
    if (base_ != nullptr) ::munmap(base_, size_);
    fd_ = std::move(other.fd_);
    base_ = other.base_;
    size_ = other.size_;
    private_ = other.private_;
    other.base_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

GuestMemory::~GuestMemory() {
  // SAFETY: base_/size_ are our own mapping, unmapped once.
  if (base_ != nullptr) ::munmap(base_, size_);
}

Result<GuestMemory> GuestMemory::fork_private() const {
  UniqueFd fd(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!fd) return system_error("dup");
  auto base = map_fd(fd.get(), size_, MAP_PRIVATE);
  if (!base) return base.error();
  return GuestMemory(std::move(fd), *base, size_, true);
}

Result<void> GuestMemory::reset_to_pristine() {
  if (!private_) return fail(Cause::guest_memory, "only a fork can be reset to pristine");
  // SAFETY: our own MAP_PRIVATE mapping; MADV_DONTNEED drops its private copies, so every
  // page reads the memfd (the master's contents) again.
  if (::madvise(base_, size_, MADV_DONTNEED) != 0) return system_error("madvise");
  return {};
}

std::uint64_t GuestMemory::host_address() const noexcept {
  // SAFETY: only an address for KVM_SET_USER_MEMORY_REGION, never dereferenced here.
  return reinterpret_cast<std::uint64_t>(base_);
}

Error GuestMemory::out_of_bounds(std::uint64_t gpa, std::uint64_t length) const {
  return fail(Cause::guest_memory, std::to_string(length) + " bytes at " + hex(gpa) +
                                            " are outside the " + hex(size_) + " bytes of guest memory");
}

Result<std::span<std::byte>> GuestMemory::span(std::uint64_t gpa, std::uint64_t length) {
  if (gpa > size_ || length > size_ - gpa) return out_of_bounds(gpa, length);
  // SAFETY: [gpa, gpa + length) was checked to lie inside the mapping of size_ bytes.
  return std::span<std::byte>(base_ + gpa, length);
}

Result<std::span<const std::byte>> GuestMemory::span(std::uint64_t gpa, std::uint64_t length) const {
  if (gpa > size_ || length > size_ - gpa) return out_of_bounds(gpa, length);
  // SAFETY: [gpa, gpa + length) was checked to lie inside the mapping of size_ bytes.
  return std::span<const std::byte>(base_ + gpa, length);
}

Result<void> GuestMemory::write(std::uint64_t gpa, std::span<const std::byte> bytes) {
  auto to = span(gpa, bytes.size());
  if (!to) return to.error();
  // SAFETY: `to` is the checked guest range of exactly bytes.size() bytes.
  if (!bytes.empty()) std::memcpy(to->data(), bytes.data(), bytes.size());
  return {};
}

Result<void> GuestMemory::read(std::uint64_t gpa, std::span<std::byte> out) const {
  auto from = span(gpa, out.size());
  if (!from) return from.error();
  // SAFETY: `from` is the checked guest range of exactly out.size() bytes.
  if (!out.empty()) std::memcpy(out.data(), from->data(), out.size());
  return {};
}

Result<void> GuestMemory::zero(std::uint64_t gpa, std::uint64_t length) {
  auto to = span(gpa, length);
  if (!to) return to.error();
  // SAFETY: `to` is the checked guest range of exactly `length` bytes.
  if (length != 0) std::memset(to->data(), 0, length);
  return {};
}

Result<std::uint64_t> GuestMemory::read_u64(std::uint64_t gpa) const {
  std::uint64_t value = 0;
  // SAFETY: value is 8 writable bytes; read() checks the guest side.
  auto r = read(gpa, std::as_writable_bytes(std::span(&value, 1)));
  if (!r) return r.error();
  return value;
}

Result<void> GuestMemory::write_u64(std::uint64_t gpa, std::uint64_t value) {
  return write(gpa, std::as_bytes(std::span(&value, 1)));
}

}  // namespace sojourn::sandbox::kvm
