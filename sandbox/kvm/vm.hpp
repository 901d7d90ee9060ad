// The thin KVM layer, system and VM side: /dev/kvm, one VM with its guest memory as slot 0.
// Nothing here decides anything; every decision is in the pure modules it calls.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <vector>

#include "sandbox/kvm/guest_memory.hpp"
#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

class KvmSystem {
 public:
  // /dev/kvm with API version 12 and the capabilities the monitor needs, or kvm_unavailable.
  static Result<KvmSystem> open();
  int fd() const noexcept { return fd_.get(); }
  std::size_t run_size() const noexcept { return run_size_; }
  // KVM_GET_SUPPORTED_CPUID: the leaves the vCPU will get, unchanged.
  Result<std::vector<kvm_cpuid_entry2>> supported_cpuid() const;

 private:
  KvmSystem(UniqueFd fd, std::size_t run_size) : fd_(std::move(fd)), run_size_(run_size) {}
  UniqueFd fd_;
  std::size_t run_size_ = 0;
};

class Vm {
 public:
  // KVM_CREATE_VM, then `memory` as slot 0 at guest-physical 0. The memory must outlive the VM.
  static Result<Vm> create(const KvmSystem& system, const GuestMemory& memory);
  // KVM_CREATE_VM without memory yet (a pooled VM, made before it is needed).
  static Result<Vm> create_empty(const KvmSystem& system);
  // `memory` as slot 0, replacing the slot's previous memory. It must outlive its use by the VM.
  Result<void> set_memory(const GuestMemory& memory);
  // Deletes slot 0 (before its memory goes away, when the VM is kept for another guest).
  Result<void> clear_memory();
  int fd() const noexcept { return fd_.get(); }

 private:
  explicit Vm(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
  bool has_memory_ = false;
};

// "microVM setup failed: NAME: strerror(errno)".
Error ioctl_error(const char* name);

}  // namespace sojourn::sandbox::kvm
