// A harness, not part of the monitor library: the host end of one microVM request driven by
// hand (no jail), for the KVM tests and the microVM benchmark: the RunRequest frame the guest
// reads, the bytes it writes back, and its first result; and a whole start from scratch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "sandbox/kvm/boot.hpp"
#include "sandbox/kvm/exit_dispatch.hpp"
#include "sandbox/kvm/kvm_error.hpp"
#include "sandbox/kvm/syscall_table.hpp"
#include "sandbox/kvm/vcpu.hpp"
#include "sandbox/kvm/vm.hpp"
#include "sandbox/microvm/monitor_errors.hpp"
#include "sandbox/process/guest_wire.hpp"

namespace sojourn::sandbox::kvm::harness {

namespace channel = sojourn::sandbox::channel;

struct OneRequest {
  std::vector<std::uint8_t> inbound;
  std::size_t read_at = 0;
  std::vector<std::uint8_t> outbound;
  sojourn::sandbox::kvm::ChannelEnd end;

  explicit OneRequest(const std::string& source, const sojourn::Limits& limits = sojourn::Limits{1'000'000, 8u << 20, 5000}) {
    channel::RunRequest request;
    request.source = source;
    request.chunk_name = "=kvm_test";
    request.limits = limits;
    request.has_host = false;
    inbound = channel::encode_frame(request);
    end.read = [this](std::span<std::byte> out) -> std::int64_t {
      const std::size_t n = std::min(out.size(), inbound.size() - read_at);
      std::memcpy(out.data(), inbound.data() + read_at, n);
      read_at += n;
      return static_cast<std::int64_t>(n);
    };
    end.write = [this](std::span<const std::byte> in) -> std::int64_t {
      // SAFETY: bytes viewed as unsigned chars, same size.
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(in.data());
      outbound.insert(outbound.end(), bytes, bytes + in.size());
      return static_cast<std::int64_t>(in.size());
    };
  }
  OneRequest(const OneRequest&) = delete;
  OneRequest& operator=(const OneRequest&) = delete;

  // The chunk's first result as an integer, or an error text.
  sojourn::Result<std::int64_t> integer_result() const {
    if (outbound.size() < channel::kHeaderBytes) {
      return sojourn::make_error(sojourn::Errc::guest_crashed, "the guest exited without an answer");
    }
    const auto header = channel::parse_header(std::span(outbound).first<channel::kHeaderBytes>());
    if (header.kind != channel::Kind::run_done) {
      return sojourn::make_error(sojourn::Errc::guest_crashed, "frame kind " + std::to_string(int(header.kind)));
    }
    auto done = channel::decode_payload<channel::RunDone>(std::span(outbound).subspan(channel::kHeaderBytes));
    if (!done) return done.error();
    if (done->code != 0) return sojourn::make_error(sojourn::Errc::internal, "the run failed: " + done->message);
    sojourn::Value v = done->value;
    if (v.is_table()) v = v.get(sojourn::Value(std::int64_t{1}));
    if (!v.is_integer()) return sojourn::make_error(sojourn::Errc::internal, "the run returned no integer");
    return v.as_integer();
  }
};

// A microVM from scratch serving `source`: guest memory, the ELF, page tables and long mode, a
// VM, a vCPU with KVM's CPUID, and the guest's whole start-up, to its first result (an integer).
inline sojourn::Result<std::int64_t> run_from_scratch(const sojourn::sandbox::kvm::KvmSystem& system,
                                                      std::span<const std::byte> elf, const std::string& source,
                                                      std::uint64_t memory_bytes, std::uint64_t budget_ms) {
  namespace kvm = sojourn::sandbox::kvm;
  auto memory = kvm::GuestMemory::create(memory_bytes);
  if (!memory) return sojourn::sandbox::wire_error(memory.error());
  kvm::GuestState state(memory_bytes);
  kvm::StackInputs stack{{"sojourn-guest", "--serve"}, {}, {}};
  kvm::host_random(std::as_writable_bytes(std::span(stack.random)));
  auto boot = kvm::prepare_guest(elf, stack, *memory, state);
  if (!boot) return sojourn::sandbox::wire_error(boot.error());
  OneRequest request(source);
  kvm::SyscallContext context{state, *memory, request.end, kvm::host_random, kvm::host_clock};
  kvm::ExitDispatcher dispatcher(context);
  auto vm = kvm::Vm::create(system, *memory);
  if (!vm) return sojourn::sandbox::wire_error(vm.error());
  auto vcpu = kvm::Vcpu::create(system, *vm);
  if (!vcpu) return sojourn::sandbox::wire_error(vcpu.error());
  if (auto set = vcpu->set_up(system, *boot, 0); !set) return sojourn::sandbox::wire_error(set.error());
  auto status = vcpu->run(dispatcher, state, budget_ms);
  if (!status) return sojourn::sandbox::wire_error(status.error());
  return request.integer_result();
}

}  // namespace sojourn::sandbox::kvm::harness
