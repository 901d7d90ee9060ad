// Transitions of the vCPU state machine.
#include "sandbox/kvm/vcpu_state.hpp"

#include <string>

namespace sojourn::sandbox::kvm {

std::string_view vcpu_state_name(VcpuState state) noexcept {
  switch (state) {
    case VcpuState::created: return "created";
    case VcpuState::running: return "running";
    case VcpuState::paused: return "paused";
    case VcpuState::finished: return "finished";
  }
  return "unknown";
}

namespace {
Error refused(VcpuState from, VcpuState to) {
  return fail(Cause::vcpu_state, std::string(vcpu_state_name(from)) + " to " +
                                        std::string(vcpu_state_name(to)));
}
}  // namespace

Result<void> VcpuStateMachine::go(VcpuState from, VcpuState to) {
  if (state_ != from) return refused(state_, to);
  state_ = to;
  return {};
}

Result<void> VcpuStateMachine::finish() {
  if (state_ == VcpuState::finished) return refused(state_, VcpuState::finished);
  state_ = VcpuState::finished;
  return {};
}

Result<void> VcpuStateMachine::rewind() {
  if (state_ == VcpuState::running) return refused(state_, VcpuState::created);
  state_ = VcpuState::created;
  return {};
}

}  // namespace sojourn::sandbox::kvm
