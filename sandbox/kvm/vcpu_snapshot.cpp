// Vcpu::snapshot and Vcpu::restore: the registers a fork copies from its master.
#include "sandbox/kvm/vcpu.hpp"

#include <sys/ioctl.h>

#include "sandbox/kvm/kvm_abi.hpp"

namespace sojourn::sandbox::kvm {

namespace {
int vcpu_ioctl(int fd, unsigned long request, const void* arg) {
  // SAFETY: every caller passes the structure its request names, alive for the call.
  return ::ioctl(fd, request, arg);
}

// KVM_GET_MSRS of the indices long_mode_msrs() sets (its values are ignored).
Result<std::vector<MsrValue>> read_msrs(int fd) {
  const auto wanted = long_mode_msrs(0);
  std::vector<std::uint64_t> buffer((sizeof(abi::MsrsHeader) + wanted.size() * sizeof(kvm_msr_entry)) / 8);
  // SAFETY: buffer (8-byte aligned) holds the kernel's header and wanted.size() entries after it.
  auto* header = reinterpret_cast<abi::MsrsHeader*>(buffer.data());
  header->nmsrs = static_cast<std::uint32_t>(wanted.size());
  // SAFETY: the entries start right after the 8-byte header, inside the buffer.
  auto* entries = reinterpret_cast<kvm_msr_entry*>(header + 1);
  for (std::size_t i = 0; i < wanted.size(); ++i) entries[i].index = wanted[i].index;
  // SAFETY: KVM_GET_MSRS writes at most nmsrs entries, inside the buffer; it returns how many.
  if (vcpu_ioctl(fd, abi::kGetMsrs, header) != static_cast<int>(wanted.size())) return ioctl_error("KVM_GET_MSRS");
  std::vector<MsrValue> msrs;
  for (std::size_t i = 0; i < wanted.size(); ++i) msrs.push_back(MsrValue{entries[i].index, entries[i].data});
  return msrs;
}
}  // namespace

Result<VcpuSnapshot> Vcpu::snapshot() const {
  VcpuSnapshot snap;
  // SAFETY (the ioctls below): each writes the structure its request names, a member of
  // snap, alive for the call.
  if (vcpu_ioctl(fd_.get(), KVM_GET_REGS, &snap.regs) != 0) return ioctl_error("KVM_GET_REGS");
  if (vcpu_ioctl(fd_.get(), KVM_GET_SREGS, &snap.sregs) != 0) return ioctl_error("KVM_GET_SREGS");
  if (vcpu_ioctl(fd_.get(), KVM_GET_XCRS, &snap.xcrs) != 0) return ioctl_error("KVM_GET_XCRS");
  // 4 KiB is enough: the area grows beyond it only for dynamic features (AMX) a process must
  // ask permission for (ARCH_REQ_XCOMP_GUEST_PERM), which the monitor never does.
  if (vcpu_ioctl(fd_.get(), abi::kGetXsave, &snap.xsave) != 0) return ioctl_error("KVM_GET_XSAVE");
  auto msrs = read_msrs(fd_.get());
  if (!msrs) return msrs.error();
  snap.msrs = std::move(*msrs);
  return snap;
}

Result<void> Vcpu::set_regs(const kvm_regs& regs) {
  // SAFETY: KVM_SET_REGS reads the kvm_regs passed, alive for the call.
  if (vcpu_ioctl(fd_.get(), KVM_SET_REGS, &regs) != 0) return ioctl_error("KVM_SET_REGS");
  return {};
}

Result<void> Vcpu::restore(const VcpuSnapshot& snap) {
  if (auto rewound = machine_.rewind(); !rewound) return rewound.error();
  clear_forced_exit();  // a new guest: an exit forced on the last one does not carry over
  // Segments and control registers first (CR4.OSXSAVE before XCR0), then XCR0, the XSAVE
  // area, MSRs, and the general registers.
  // SAFETY (the four ioctls below): each reads the structure its request names, inside snap.
  if (vcpu_ioctl(fd_.get(), KVM_SET_SREGS, &snap.sregs) != 0) return ioctl_error("KVM_SET_SREGS");
  if (vcpu_ioctl(fd_.get(), KVM_SET_XCRS, &snap.xcrs) != 0) return ioctl_error("KVM_SET_XCRS");
  if (vcpu_ioctl(fd_.get(), abi::kSetXsave, &snap.xsave) != 0) return ioctl_error("KVM_SET_XSAVE");
  if (auto set = set_msrs(snap.msrs); !set) return set.error();
  // A vCPU that ended halted (a fatal exception's `hlt`) would otherwise wait for an interrupt.
  kvm_mp_state runnable{KVM_MP_STATE_RUNNABLE};
  // SAFETY: KVM_SET_MP_STATE reads the kvm_mp_state on this stack frame.
  if (vcpu_ioctl(fd_.get(), KVM_SET_MP_STATE, &runnable) != 0) return ioctl_error("KVM_SET_MP_STATE");
  return set_regs(snap.regs);
}

}  // namespace sojourn::sandbox::kvm
