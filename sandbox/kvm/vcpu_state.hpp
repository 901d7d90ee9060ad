// The vCPU's life as an explicit state machine: created -> running <-> paused -> finished.
// running: inside KVM_RUN or handling its exit; paused: stopped between runs by its owner
// (a master waiting to be forked, a guest waiting for its next request); finished: ended
// (exit_group or a fatal exit), never resumed. rewind: a fork's vCPU loaded again with its
// master's registers (reset) starts over as created.
#pragma once

#include <string_view>

#include "sandbox/kvm/kvm_error.hpp"

namespace sojourn::sandbox::kvm {

enum class VcpuState { created, running, paused, finished };

std::string_view vcpu_state_name(VcpuState state) noexcept;

class VcpuStateMachine {
 public:
  VcpuState state() const noexcept { return state_; }
  // Cause::vcpu_state for a transition the diagram does not have; the state is then unchanged.
  Result<void> start() { return go(VcpuState::created, VcpuState::running); }
  Result<void> pause() { return go(VcpuState::running, VcpuState::paused); }
  Result<void> resume() { return go(VcpuState::paused, VcpuState::running); }
  // From any state but finished: a run that ended, or a VM discarded before or between runs.
  Result<void> finish();
  // From paused or finished (or created): the registers were replaced by a snapshot's.
  Result<void> rewind();

 private:
  Result<void> go(VcpuState from, VcpuState to);
  VcpuState state_ = VcpuState::created;
};

}  // namespace sojourn::sandbox::kvm
