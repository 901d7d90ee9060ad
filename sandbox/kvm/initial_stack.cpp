// Writes argv, envp and auxv onto the guest's stack.
#include "sandbox/kvm/initial_stack.hpp"

#include <elf.h>

#include <utility>

#include "sandbox/kvm/layout.hpp"

namespace sojourn::sandbox::kvm {

namespace {
// Two pages hold the strings and vectors; more would be a caller asking for a huge argv.
constexpr std::uint64_t kMaxStartBytes = 2 * kPageSize;

Error too_large() {
  return fail(Cause::guest_memory, "argv, envp and auxv need more than 8192 bytes of stack");
}
}  // namespace

Result<InitialStack> build_initial_stack(const ElfImage& image, const StackInputs& inputs, GuestMemory& memory,
                                         AddressSpace& space) {
  if (auto reserved = space.reserve(kStackTop - kStackBytes, kStackBytes, kProtRead | kProtWrite); !reserved) {
    return reserved.error();
  }
  std::uint64_t cursor = kStackTop;
  std::vector<std::uint64_t> string_at;  // argv's then envp's addresses
  bool written = true;                   // false once guest memory ran out
  auto push_bytes = [&](const void* data, std::uint64_t size) -> std::uint64_t {
    cursor -= size;
    // SAFETY: data points at `size` readable bytes (a string with its NUL, or the random array).
    written = space.copy_to_guest(memory, cursor, std::span(static_cast<const std::byte*>(data), size)) && written;
    return cursor;
  };
  for (const auto* list : {&inputs.argv, &inputs.envp}) {
    for (const auto& s : *list) {
      if (s.size() >= kMaxStartBytes || kStackTop - cursor + s.size() + 1 > kMaxStartBytes) return too_large();
      string_at.push_back(push_bytes(s.c_str(), s.size() + 1));
    }
  }
  cursor &= ~std::uint64_t{15};
  const std::uint64_t random_gva = push_bytes(inputs.random.data(), inputs.random.size());
  const std::uint64_t execfn = inputs.argv.empty() ? 0 : string_at.front();

  const std::pair<std::uint64_t, std::uint64_t> auxv[] = {
      {AT_PHDR, image.phdr_vaddr}, {AT_PHENT, sizeof(Elf64_Phdr)}, {AT_PHNUM, image.phnum},
      {AT_PAGESZ, kPageSize},      {AT_BASE, 0},                   {AT_FLAGS, 0},
      {AT_ENTRY, image.entry},     {AT_UID, 0},                    {AT_EUID, 0},
      {AT_GID, 0},                 {AT_EGID, 0},                   {AT_SECURE, 0},
      {AT_CLKTCK, 100},            {AT_RANDOM, random_gva},        {AT_EXECFN, execfn},
      {AT_NULL, 0}};
  std::vector<std::uint64_t> words;
  words.push_back(inputs.argv.size());
  for (std::size_t i = 0; i < inputs.argv.size(); ++i) words.push_back(string_at[i]);
  words.push_back(0);
  for (std::size_t i = inputs.argv.size(); i < string_at.size(); ++i) words.push_back(string_at[i]);
  words.push_back(0);
  for (const auto& [type, value] : auxv) {
    words.push_back(type);
    words.push_back(value);
  }
  const std::uint64_t bytes = words.size() * 8;
  if (kStackTop - cursor + bytes + 16 > kMaxStartBytes) return too_large();
  const std::uint64_t rsp = (cursor - bytes) & ~std::uint64_t{15};
  if (!space.copy_to_guest(memory, rsp, std::as_bytes(std::span(words))) || !written) {
    return fail(Cause::guest_memory, "cannot write the initial stack");
  }
  return InitialStack{rsp, random_gva};
}

}  // namespace sojourn::sandbox::kvm
