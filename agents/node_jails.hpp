// Internal: where a node runs code: its JailSet (one jail per isolation level, each started
// on first use) and the level code from peers runs at.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/sandbox/jail.hpp"

namespace sojourn {

class NodeJails {
 public:
  explicit NodeJails(const NodeOptions& options);
  NodeJails(const NodeJails&) = delete;
  NodeJails& operator=(const NodeJails&) = delete;

  // The level code from a peer runs at: the stronger of what it asked for and the node's
  // peer level; an error when this node cannot offer it.
  Result<Isolation> peer_level(Isolation asked);
  // options.peer_isolation, or when it is unset the strongest level this node has (microvm
  // where KVM can run the guest, else process), decided once.
  Isolation node_peer_level();
  // node_peer_level() once it has been decided; never decides it (which may start jails).
  std::optional<Isolation> known_peer_level() const;
  // Why `level` cannot run here (its jail did not start), or null when it can.
  const std::string* unavailable(Isolation level) { return jails_.unavailable(level); }
  // The levels this node has, and why each missing one is missing (starts the jails).
  IsolationLevels levels();
  // The levels whose jail has started (trusted always has); never starts one.
  std::vector<Isolation> started_levels() const;
  // One chunk or one agent step at a level.
  Result<Value> run_chunk(Isolation level, const sandbox::RunInput& input, sandbox::HostCalls* host);
  // A chunk at `process` in an idle warm guest of input.principal, if the process jail has
  // started and has one (ProcessJail::run_if_warm); nullopt at once otherwise.
  std::optional<Result<Value>> run_chunk_if_warm(const sandbox::RunInput& input, sandbox::HostCalls* host,
                                                 std::uint32_t kill_grace_ms);
  // Chunks at one level, in order: at `process` in one warm guest at once where they share
  // a principal (ProcessJail::run_burst), otherwise one by one. results[i] is run_chunk's for
  // inputs[i].
  std::vector<Result<Value>> run_chunk_burst(Isolation level, std::span<const sandbox::RunInput* const> inputs,
                                             std::span<sandbox::HostCalls* const> hosts);
  Result<sandbox::AgentOutcome> run_agent_step(Isolation level, const sandbox::RunInput& input,
                                               const sandbox::AgentInput& agent, sandbox::HostCalls* host);
  // Strong steps (Jail::run_strong, Jail::resume_strong) at a level; trusted refuses them.
  Result<sandbox::StrongOutcome> run_strong_step(Isolation level, const sandbox::RunInput& input,
                                                 const sandbox::AgentInput& agent, sandbox::HostCalls* host);
  Result<sandbox::StrongOutcome> resume_strong_step(Isolation level, std::span<const std::uint8_t> image,
                                                    const sandbox::RunInput& input, const Value& info,
                                                    sandbox::HostCalls* host,
                                                    const std::array<std::uint8_t, 32>* hashed = nullptr);
  // The SHA-256 of this node's guest executable, what a heap image names as its build (the
  // process and microvm levels run the same static guest); computed once. Errors: the guest
  // cannot be found or read.
  Result<std::array<std::uint8_t, 32>> guest_build();
  // Runs the process jail served with a warm guest (no fork on their path) since it started;
  // 0 before the process jail starts. Never starts a jail.
  std::uint64_t warm_guest_reuses() const;

 private:
  const NodeOptions& options_;
  sandbox::JailSet jails_;
  std::once_flag peer_level_once_;
  Isolation resolved_peer_level_ = Isolation::process;
  std::atomic<bool> peer_level_known_{false};  // resolved_peer_level_ is set
  std::once_flag build_once_;
  std::optional<Result<std::array<std::uint8_t, 32>>> build_;
};

}  // namespace sojourn
