// The monitor's own errors: which step of the monitor failed (a cause), the errno when a system
// call said no, and a detail. They stay inside the monitor: the wire's Errc carries what peers
// see, and the microVM jail maps a kvm::Error to it in one place (sandbox/microvm/monitor_errors).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace sojourn::sandbox::kvm {

// Each cause's comment is its message, as message() writes it; ": strerror(errno)" follows
// when the error carries an errno.
enum class Cause : std::uint8_t {
  none,          // "no error"
  unavailable,   // "KVM unavailable: DETAIL" (no /dev/kvm, wrong API version, missing capability)
  bad_elf,       // "bad guest ELF: DETAIL" (the guest executable cannot be loaded as it is)
  guest_memory,  // "guest memory: DETAIL" (a host-side access or layout outside guest memory)
  memory_full,   // "memory limit of LIMIT bytes exceeded" (no free page of guest memory is left)
  ioctl,         // "microVM setup failed: DETAIL" (DETAIL names the ioctl KVM refused)
  guest_fault,   // "microVM guest fault: DETAIL" (exception, triple fault, touch outside its map)
  entry_failed,  // "microVM entry failed: DETAIL" (KVM_EXIT_FAIL_ENTRY / KVM_EXIT_INTERNAL_ERROR)
  vcpu_state,    // "microVM vCPU cannot go from DETAIL" (DETAIL is "FROM to TO"; a monitor bug)
  master,        // "microVM master: DETAIL" (the master VM did not reach its first request, a fork misused)
  filter,        // "microVM monitor filter: DETAIL" (the monitor thread's seccomp table)
  budget,        // "wall-clock deadline of LIMIT ms exceeded" (the run's budget timer fired)
  bug,           // "internal error: microVM: DETAIL" (the monitor broke its own rules)
};

// The fixed short name of a cause ("guest_fault"), for logs and test output.
std::string_view cause_name(Cause cause) noexcept;

struct Error {
  Cause cause = Cause::none;
  std::string detail;         // what and where, never a host address
  int sys_errno = 0;          // the errno of the failed system call, 0 when none
  std::uint64_t limit = 0;    // memory_full: bytes of guest memory; budget: milliseconds

  // The whole sentence, from the cause's template above.
  std::string message() const;

  friend bool operator==(const Error&, const Error&) = default;
};

inline Error fail(Cause cause, std::string detail) { return Error{cause, std::move(detail), 0, 0}; }
// `err` is an errno value (positive); a negative one, as libseccomp returns, is negated.
inline Error fail_errno(Cause cause, std::string detail, int err) {
  return Error{cause, std::move(detail), err < 0 ? -err : err, 0};
}
inline Error over_limit(Cause cause, std::uint64_t limit) { return Error{cause, {}, 0, limit}; }

// A value or a kvm::Error (std::expected is C++23). Inside the monitor `Result` means this one.
template <class T>
class [[nodiscard]] Result {
 public:
  Result() requires std::is_default_constructible_v<T> : v_(std::in_place_index<0>) {}
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT
  bool ok() const noexcept { return !error_.has_value(); }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const { return *error_; }

 private:
  std::optional<Error> error_;
};

}  // namespace sojourn::sandbox::kvm
