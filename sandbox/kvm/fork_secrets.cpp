// A fork's own stack-protector canary and AT_RANDOM bytes (see fork_secrets.hpp).
#include "sandbox/kvm/fork_secrets.hpp"

#include <cstring>
#include <string>

#include "sandbox/kvm/hex.hpp"
#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
Error secrets_error(const std::string& what) { return fail(Cause::guest_memory, "fork secrets: " + what); }

std::uint64_t random_word(const std::function<void(std::span<std::byte>)>& random) {
  std::uint64_t word = 0;
  random(std::as_writable_bytes(std::span(&word, 1)));
  return word;
}
}  // namespace

Result<ReseedReport> reseed_fork_secrets(GuestMemory& memory, GuestState& state, std::uint64_t rsp,
                                         const std::function<void(std::span<std::byte>)>& random) {
  if (state.fs_base == 0) return secrets_error("the guest has no thread control block yet");
  ReseedReport report;
  const std::uint64_t guard_at = state.fs_base + kTcbStackGuardOffset;
  if (!state.space.copy_from_guest(memory, guard_at, std::as_writable_bytes(std::span(&report.old_canary, 1)))) {
    return secrets_error("no canary at " + hex(guard_at));
  }
  // glibc keeps the low byte zero, so that a string overflow stops at it.
  do {
    report.new_canary = random_word(random) & ~std::uint64_t{0xff};
  } while (report.new_canary == 0 || report.new_canary == report.old_canary);

  // The paused frames: every page from RSP to the stack top was used, so all are backed.
  if (rsp >= kStackTop || rsp < kStackTop - kStackBytes) return secrets_error("RSP " + hex(rsp) + " is outside the stack");
  for (std::uint64_t page = rsp & ~(kPageSize - 1); page < kStackTop; page += kPageSize) {
    auto found = state.space.tables().translate(memory, page);
    if (!found || !*found) return secrets_error("stack page " + hex(page) + " is not backed");
    auto bytes = memory.span((*found)->gpa, kPageSize);
    if (!bytes) return bytes.error();
    const std::uint64_t first = page < rsp ? rsp - page : 0;
    for (std::uint64_t offset = (first + 7) & ~std::uint64_t{7}; offset + 8 <= kPageSize; offset += 8) {
      std::uint64_t word = 0;
      // SAFETY: offset + 8 <= kPageSize, inside the checked span of one page.
      std::memcpy(&word, bytes->data() + offset, 8);
      if (word != report.old_canary) continue;
      // SAFETY: the same 8 bytes.
      std::memcpy(bytes->data() + offset, &report.new_canary, 8);
      ++report.stack_copies;
    }
  }
  if (!state.space.copy_to_guest(memory, guard_at, std::as_bytes(std::span(&report.new_canary, 1)))) {
    return secrets_error("cannot write the canary at " + hex(guard_at));
  }
  if (state.at_random != 0) {
    std::byte fresh[16];
    random(fresh);
    if (!state.space.copy_to_guest(memory, state.at_random, fresh)) {
      return secrets_error("cannot write AT_RANDOM at " + hex(state.at_random));
    }
  }
  return report;
}

}  // namespace sojourn::sandbox::kvm
