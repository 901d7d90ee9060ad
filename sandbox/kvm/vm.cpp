// /dev/kvm and KVM_CREATE_VM / KVM_SET_USER_MEMORY_REGION.
#include "sandbox/kvm/vm.hpp"

#include "sandbox/kvm/kvm_abi.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace sojourn::sandbox::kvm {

Error ioctl_error(const char* name) {
  return fail_errno(Cause::ioctl, name, errno);
}

namespace {
Error unavailable(const std::string& why) { return fail(Cause::unavailable, why); }

int ioctl_retry(int fd, unsigned long request, unsigned long arg) {
  int rc = 0;
  do {
    // SAFETY: callers pass a request whose argument is the integer or pointer given.
    rc = ::ioctl(fd, request, arg);
  } while (rc < 0 && errno == EINTR);
  return rc;
}
}  // namespace

Result<KvmSystem> KvmSystem::open() {
  UniqueFd fd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!fd) return fail_errno(Cause::unavailable, "/dev/kvm", errno);
  // kvm_pvm (a KVM without VMX/SVM, seen on cloud VMs) runs PVM-aware guest kernels only: its
  // vCPU starts in its own supervisor mode and delivers `syscall` to MSR_PVM_EVENT_ENTRY, so
  // our ring-3 guest's first syscall lands at LSTAR still in ring 3. Say so instead.
  if (::access("/sys/module/kvm_pvm", F_OK) == 0 && ::access("/sys/module/kvm_amd", F_OK) != 0 &&
      ::access("/sys/module/kvm_intel", F_OK) != 0) {
    return unavailable("/dev/kvm is kvm_pvm, which runs only PVM-aware guest kernels (no kvm_amd or kvm_intel)");
  }
  // SAFETY: KVM_GET_API_VERSION takes no argument.
  const int version = ioctl_retry(fd.get(), KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) return unavailable("API version " + std::to_string(version) + ", expected 12");
  for (const auto& [cap, name] : {std::pair{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
                                  std::pair{KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
                                  std::pair{KVM_CAP_XCRS, "KVM_CAP_XCRS"},
                                  std::pair{KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"}}) {
    // SAFETY: KVM_CHECK_EXTENSION takes the capability number by value.
    if (ioctl_retry(fd.get(), KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap)) <= 0) {
      return unavailable(std::string("missing capability ") + name);
    }
  }
  // SAFETY: KVM_GET_VCPU_MMAP_SIZE takes no argument.
  const int run_size = ioctl_retry(fd.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < static_cast<int>(sizeof(kvm_run))) return ioctl_error("KVM_GET_VCPU_MMAP_SIZE");
  return KvmSystem(std::move(fd), static_cast<std::size_t>(run_size));
}

Result<std::vector<kvm_cpuid_entry2>> KvmSystem::supported_cpuid() const {
  for (std::uint32_t capacity = 64; capacity <= 1024; capacity *= 2) {
    std::vector<std::uint64_t> buffer((sizeof(abi::CpuidHeader) + capacity * sizeof(kvm_cpuid_entry2)) / 8 + 1);
    // SAFETY: buffer (8-byte aligned) holds the kernel's header and `capacity` entries after it.
    auto* header = reinterpret_cast<abi::CpuidHeader*>(buffer.data());
    header->nent = capacity;
    // SAFETY: KVM writes at most nent entries after the header, inside the buffer.
    if (ioctl_retry(fd_.get(), abi::kGetSupportedCpuid, reinterpret_cast<unsigned long>(header)) == 0) {
      // SAFETY: entries start right after the 8-byte header; KVM set nent <= capacity.
      const auto* entries = reinterpret_cast<const kvm_cpuid_entry2*>(header + 1);
      return std::vector<kvm_cpuid_entry2>(entries, entries + header->nent);
    }
    if (errno != E2BIG) return ioctl_error("KVM_GET_SUPPORTED_CPUID");
  }
  return ioctl_error("KVM_GET_SUPPORTED_CPUID");
}

Result<Vm> Vm::create_empty(const KvmSystem& system) {
  // SAFETY: KVM_CREATE_VM takes the machine type 0 (the default) by value.
  UniqueFd fd(ioctl_retry(system.fd(), KVM_CREATE_VM, 0));
  if (!fd) return ioctl_error("KVM_CREATE_VM");
  // Intel needs three pages for its real-mode TSS even if the guest never runs in real mode;
  // Firecracker's address, above any guest memory of ours (AMD ignores it).
  // SAFETY: KVM_SET_TSS_ADDR takes the address by value.
  if (ioctl_retry(fd.get(), KVM_SET_TSS_ADDR, 0xfffb'd000UL) != 0) return ioctl_error("KVM_SET_TSS_ADDR");
  return Vm(std::move(fd));
}

Result<Vm> Vm::create(const KvmSystem& system, const GuestMemory& memory) {
  auto vm = create_empty(system);
  if (!vm) return vm.error();
  if (auto set = vm->set_memory(memory); !set) return set.error();
  return vm;
}

Result<void> Vm::clear_memory() {
  if (!has_memory_) return {};
  kvm_userspace_memory_region region{};
  region.slot = 0;  // memory_size 0 deletes the slot
  // SAFETY: a region of size 0 names no host memory.
  if (ioctl_retry(fd_.get(), KVM_SET_USER_MEMORY_REGION, reinterpret_cast<unsigned long>(&region)) != 0) {
    return ioctl_error("KVM_SET_USER_MEMORY_REGION");
  }
  has_memory_ = false;
  return {};
}

Result<void> Vm::set_memory(const GuestMemory& memory) {
  // KVM cannot move a slot to other host memory in place: delete it, then create it again.
  if (auto cleared = clear_memory(); !cleared) return cleared.error();
  kvm_userspace_memory_region region{};
  region.slot = 0;
  region.guest_phys_addr = 0;
  region.memory_size = memory.size();
  region.userspace_addr = memory.host_address();
  // SAFETY: region describes the whole mapping of `memory`, which outlives its use (caller's contract).
  if (ioctl_retry(fd_.get(), KVM_SET_USER_MEMORY_REGION, reinterpret_cast<unsigned long>(&region)) != 0) {
    return ioctl_error("KVM_SET_USER_MEMORY_REGION");
  }
  has_memory_ = true;
  return {};
}

}  // namespace sojourn::sandbox::kvm
