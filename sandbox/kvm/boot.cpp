// The boot sequence of a microVM guest, in guest memory.
#include "sandbox/kvm/boot.hpp"

#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/layout.hpp"
#include "sandbox/kvm/long_mode.hpp"

namespace sojourn::sandbox::kvm {

Result<BootRegisters> prepare_guest(std::span<const std::byte> elf, const StackInputs& stack, GuestMemory& memory,
                                    GuestState& state) {
  auto image = parse_elf(elf);
  if (!image) return image.error();
  if (auto tables = write_system_tables(memory, state.space); !tables) return tables.error();
  if (auto loaded = load_elf(*image, elf, memory, state.space); !loaded) return loaded.error();
  state.brk_start = state.brk_current = (image->image_end + kPageSize - 1) & ~(kPageSize - 1);
  auto initial = build_initial_stack(*image, stack, memory, state.space);
  if (!initial) return initial.error();
  state.at_random = initial->random_gva;
  return BootRegisters{image->entry, initial->rsp};
}

}  // namespace sojourn::sandbox::kvm
