// Boots the real sojourn-guest in a microVM and runs `return 1+1` through its channel. Needs
// /dev/kvm: it runs in the nested-QEMU harness (label kvm), never here. Static, so the
// harness's initramfs can carry it. Prints PASS or FAIL with the error; exit 0 only on PASS.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "sandbox/kvm/boot.hpp"
#include "sandbox/kvm/elf_loader.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/long_mode.hpp"
#include "sandbox/kvm/vcpu.hpp"
#include "sandbox/kvm/vcpu_state.hpp"
#include "sandbox/kvm/vm.hpp"
#include "sandbox/process/guest_wire.hpp"
#include "sandbox/microvm/monitor_errors.hpp"

using namespace sojourn::sandbox::kvm;
namespace channel = sojourn::sandbox::channel;

namespace {
constexpr std::uint64_t kMemoryBytes = 256ULL << 20;

int fail(const std::string& why) {
  std::printf("FAIL kvm_guest_test: %s\n", why.c_str());
  return 1;
}

// The host end of the guest's channel: the request frame to read, the reply bytes written.
struct ScriptedChannel {
  std::vector<std::uint8_t> inbound;
  std::size_t read_at = 0;
  std::vector<std::uint8_t> outbound;

  ChannelEnd end() {
    return ChannelEnd{
        [this](std::span<std::byte> out) -> std::int64_t {
          const std::size_t n = std::min(out.size(), inbound.size() - read_at);
          std::memcpy(out.data(), inbound.data() + read_at, n);
          read_at += n;
          return static_cast<std::int64_t>(n);
        },
        [this](std::span<const std::byte> in) -> std::int64_t {
          // SAFETY: bytes viewed as unsigned chars, same size.
          const auto* bytes = reinterpret_cast<const std::uint8_t*>(in.data());
          outbound.insert(outbound.end(), bytes, bytes + in.size());
          return static_cast<std::int64_t>(in.size());
        }};
  }
};

// One microVM from scratch: boot the guest, hand it `source`, run under `budget_ms`.
sojourn::Result<channel::RunDone> run_chunk(const KvmSystem& system, std::span<const std::byte> elf,
                                            const std::string& source, const sojourn::Limits& limits,
                                            std::uint64_t budget_ms) {
  auto memory = GuestMemory::create(kMemoryBytes);
  if (!memory) return sojourn::sandbox::wire_error(memory.error());
  GuestState state(kMemoryBytes);
  StackInputs stack{{"sojourn-guest", "--serve"}, {}, {}};
  host_random(std::as_writable_bytes(std::span(stack.random)));
  auto boot = prepare_guest(elf, stack, *memory, state);
  if (!boot) return sojourn::sandbox::wire_error(boot.error());

  channel::RunRequest request;
  request.source = source;
  request.chunk_name = "=kvm_guest_test";
  request.limits = limits;
  request.has_host = false;
  ScriptedChannel scripted;
  scripted.inbound = channel::encode_frame(request);
  ChannelEnd end = scripted.end();
  SyscallContext context{state, *memory, end, host_random, host_clock};
  ExitDispatcher dispatcher(context);

  auto vm = Vm::create(system, *memory);
  if (!vm) return sojourn::sandbox::wire_error(vm.error());
  auto vcpu = Vcpu::create(system, *vm);
  if (!vcpu) return sojourn::sandbox::wire_error(vcpu.error());
  if (auto set = vcpu->set_up(system, *boot, 0); !set) return sojourn::sandbox::wire_error(set.error());
  auto status = vcpu->run(dispatcher, state, budget_ms);
  if (!status) return sojourn::sandbox::wire_error(status.error());
  if (vcpu->state() != VcpuState::finished) return sojourn::make_error(sojourn::Errc::internal, "vCPU not finished");

  if (scripted.outbound.size() < channel::kHeaderBytes) {
    return sojourn::make_error(sojourn::Errc::guest_crashed, "the guest exited without an answer");
  }
  const auto header = channel::parse_header(std::span(scripted.outbound).first<channel::kHeaderBytes>());
  if (header.kind != channel::Kind::run_done) {
    return sojourn::make_error(sojourn::Errc::guest_crashed, "frame kind " + std::to_string(int(header.kind)));
  }
  return channel::decode_payload<channel::RunDone>(std::span(scripted.outbound).subspan(channel::kHeaderBytes));
}

// The file, or nothing (the caller reports an empty guest).
std::vector<std::byte> read_elf(const std::string& path) {
  auto bytes = read_elf_file(path);
  return bytes ? std::move(*bytes) : std::vector<std::byte>{};
}

// A guest without a channel, expected to end badly: its error (or a note that it did not).
sojourn::Error run_raw(const KvmSystem& system, std::span<const std::byte> elf) {
  auto memory = GuestMemory::create(16ULL << 20);
  if (!memory) return sojourn::sandbox::wire_error(memory.error());
  GuestState state(16ULL << 20);
  auto boot = prepare_guest(elf, StackInputs{{"fault"}, {}, {}}, *memory, state);
  if (!boot) return sojourn::sandbox::wire_error(boot.error());
  ChannelEnd none;
  SyscallContext context{state, *memory, none, host_random, host_clock};
  ExitDispatcher dispatcher(context);
  auto vm = Vm::create(system, *memory);
  if (!vm) return sojourn::sandbox::wire_error(vm.error());
  auto vcpu = Vcpu::create(system, *vm);
  if (!vcpu) return sojourn::sandbox::wire_error(vcpu.error());
  if (auto set = vcpu->set_up(system, *boot, 0); !set) return sojourn::sandbox::wire_error(set.error());
  auto status = vcpu->run(dispatcher, state, 5'000);
  if (status) return sojourn::make_error(sojourn::Errc::ok, "exited with status " + std::to_string(*status));
  return sojourn::sandbox::wire_error(status.error());
}
}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : SOJOURN_GUEST_ELF;
  const std::vector<std::byte> elf = read_elf(path);
  if (elf.empty()) return fail("cannot read the guest " + path);
  auto system = KvmSystem::open();
  if (!system) return fail(system.error().message());

  // 1. REV: the guest answers `return 1+1`.
  auto done = run_chunk(*system, elf, "return 1+1", sojourn::Limits{1'000'000, 16u << 20, 5000}, 20'000);
  if (!done) return fail(done.error().message);
  if (done->code != 0) return fail("the run failed: " + done->message);
  const sojourn::Value& v = done->value;
  const bool two = (v.is_integer() && v.as_integer() == 2) ||
                   (v.is_table() && v.get(sojourn::Value(std::int64_t{1})).is_integer() &&
                    v.get(sojourn::Value(std::int64_t{1})).as_integer() == 2);
  if (!two) return fail("the run did not return 2");
  std::printf("ok: return 1+1 = 2 in a microVM\n");

  // 2. The monitor's budget timer stops a guest that spins past it (the guest's own limits
  // are far away): KVM_EXIT_INTR with the timer fired is the deadline error.
  auto spin = run_chunk(*system, elf, "while true do end", sojourn::Limits{1ULL << 50, 16u << 20, 600'000}, 300);
  if (spin) return fail("a spinning guest answered: " + spin->message);
  if (spin.error().code != sojourn::Errc::deadline || spin.error().message.find("300 ms") == std::string::npos) {
    return fail("spin: " + spin.error().message);
  }
  std::printf("ok: a spinning guest is stopped by the budget timer: %s\n", spin.error().message.c_str());

  // 3. Guests that misbehave end their VM with what they did; the monitor goes on.
  struct FaultCase {
    const char* guest;
    std::string expected;
  };
  const FaultCase faults[] = {
      {"kvm_fault_ud2", "microVM guest fault: #UD (invalid opcode) at rip "},
      {"kvm_fault_wild_write", "microVM guest fault: wrote to unmapped memory at 0xdead0000"},
      {"kvm_fault_munmap_touch", "microVM guest fault: wrote to unmapped memory at 0x7fffbf7fe000"},
  };
  for (const auto& c : faults) {
    auto error = run_raw(*system, read_elf(std::string(SOJOURN_FAULT_GUEST_DIR) + "/" + c.guest));
    if (error.message.rfind(c.expected, 0) != 0) return fail(std::string(c.guest) + ": " + error.message);
    std::printf("ok: %s: %s\n", c.guest, error.message.c_str());
  }

  // 4. SMEP and SMAP: a booted vCPU has them in CR4 exactly where KVM's CPUID offers them
  // (the runs above already had them on: the stub touches no user page).
  {
    auto leaves = system->supported_cpuid();
    if (!leaves) return fail(leaves.error().message());
    std::uint32_t leaf7_ebx = 0;
    for (const auto& leaf : *leaves) {
      if (leaf.function == 7 && leaf.index == 0) leaf7_ebx = leaf.ebx;
    }
    auto memory = GuestMemory::create(16ULL << 20);
    if (!memory) return fail(memory.error().message());
    GuestState state(16ULL << 20);
    auto boot = prepare_guest(elf, StackInputs{{"sojourn-guest"}, {}, {}}, *memory, state);
    auto vm = Vm::create(*system, *memory);
    if (!boot || !vm) return fail("a guest for the CR4 check");
    auto vcpu = Vcpu::create(*system, *vm);
    if (!vcpu || !vcpu->set_up(*system, *boot, 0)) return fail("a vCPU for the CR4 check");
    auto snapshot = vcpu->snapshot();
    if (!snapshot) return fail(snapshot.error().message());
    if (snapshot->sregs.cr4 != cr4_for(leaf7_ebx)) return fail("CR4 " + std::to_string(snapshot->sregs.cr4));
    std::printf("ok: CR4 %#llx: SMEP %s, SMAP %s (as KVM's CPUID leaf 7 offers them)\n",
                static_cast<unsigned long long>(snapshot->sregs.cr4), (snapshot->sregs.cr4 & cr4::kSmep) ? "on" : "off",
                (snapshot->sregs.cr4 & cr4::kSmap) ? "on" : "off");
  }

  std::printf("PASS kvm_guest_test\n");
  return 0;
}
