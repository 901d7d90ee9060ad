// One interface for every isolation level (a Jail) and the set a node keeps of them (a
// JailSet): each level's jail starts on first use, once; a level that cannot start keeps the
// reason. Adding a level is one Jail class and one row in the level table (jail_set.cpp).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/value.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox {

// A strong agent step (docs/migration.md, "Strong mobility"). When step.strong_stop is set the
// agent stopped at agent.go(peer) (step.went, step.go_peer) or agent.checkpoint()
// (step.checkpoint), and `image` holds its sealed heap image: what a resume_strong, in this jail
// or another node's, goes on from.
struct StrongOutcome {
  AgentOutcome step;
  std::vector<std::uint8_t> image;
  std::uint64_t raw_bytes = 0;   // the arena span the image covers
  std::uint64_t image_us = 0;    // sealing it on the host: zero-page scan, zstd, SHA-256
  std::uint64_t restore_us = 0;  // opening and checking the image on the host (resume_strong)
  // Moments inside the step, in order, for the node's trace (docs/bench.md): the guest taken
  // (guest_warm / guest_forked), a resume's pages asked for and written (guest_ready,
  // pages_in), a stop's span received and sealed (span_received, span_sealed).
  std::vector<std::pair<const char*, std::chrono::steady_clock::time_point>> marks;
};

// sandbox_refused "refused by the sandbox: strong mobility needs the process or microvm level
// (LEVEL: WHY)", what a level that cannot carry a heap image answers.
Error strong_refused(Isolation level, std::string_view why);

// Where code runs at one isolation level. run and run_agent have run_lua's and run_agent's
// results and errors, plus each level's own (documented on its class). Thread-safe: runs may
// be concurrent; host calls arrive on the calling thread.
class Jail {
 public:
  virtual ~Jail() = default;
  virtual Isolation level() const = 0;
  virtual Result<Value> run(const RunInput& input, HostCalls* host) = 0;
  virtual Result<AgentOutcome> run_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) = 0;
  // What the jail is doing, for logs: "guest PATH, zygote PID, namespaces: ..." (no level name).
  virtual std::string describe() const = 0;
  // Strong steps. run_strong: the entry runs as a strong agent (run_agent's errors). resume_strong:
  // the image is checked on the host (build, address, sizes against input.limits' memory quota
  // before decompressing, hash; refusals are sandbox_refused, see docs/migration.md) and
  // resumed in a fresh guest under input's limits and `info`'s facts (input.source is unused;
  // the memory limit must be the one the image was taken under). Levels without an arena refuse.
  // `hashed`: the SHA-256 the caller itself found every byte of `image` to hash to (a node that
  // checked a TRANSFER's image, or sealed it, and held it unchanged since): a jail may compare the
  // image's hash with it instead of hashing the bytes again. Null: the jail hashes them.
  virtual Result<StrongOutcome> run_strong(const RunInput& input, const AgentInput& agent, HostCalls* host) {
    (void)input, (void)agent, (void)host;
    return strong_refused(level(), "this level cannot carry a heap image yet");
  }
  virtual Result<StrongOutcome> resume_strong(std::span<const std::uint8_t> image, const RunInput& input,
                                              const Value& info, HostCalls* host,
                                              const std::array<std::uint8_t, 32>* hashed = nullptr) {
    (void)image, (void)input, (void)info, (void)host, (void)hashed;
    return strong_refused(level(), "this level cannot carry a heap image yet");
  }
};

// The `trusted` level: run_lua and run_agent in the calling process.
class TrustedJail final : public Jail {
 public:
  Isolation level() const override { return Isolation::trusted; }
  Result<Value> run(const RunInput& input, HostCalls* host) override { return run_lua(input, host); }
  Result<AgentOutcome> run_agent(const RunInput& input, const AgentInput& agent, HostCalls* host) override {
    return sandbox::run_agent(input, agent, host);
  }
  std::string describe() const override { return "restricted lua_State in the node process"; }
  Result<StrongOutcome> run_strong(const RunInput&, const AgentInput&, HostCalls*) override {
    return strong_refused(level(), "its Lua heap is not an arena at a fixed address");
  }
  Result<StrongOutcome> resume_strong(std::span<const std::uint8_t>, const RunInput&, const Value&, HostCalls*,
                                      const std::array<std::uint8_t, 32>* = nullptr) override {
    return strong_refused(level(), "its Lua heap is not an arena at a fixed address");
  }
};

// What every level's start-up may need; each level reads its own fields.
struct JailConfig {
  // The sojourn-guest executable (see ProcessJailOptions::guest_path); empty: found.
  std::string guest_path;
  // The largest Lua heap one run may ask for (a microVM is sized to hold it); 0: the default.
  std::uint64_t max_memory_bytes = 0;
  // Who owns the set, as log lines start: "NAME: process jail ready (...)". Empty: "jails".
  std::string owner;
  // A level whose absence is usual (microvm without KVM) is logged as a fact, not a warning,
  // unless it is this one (the level the owner asked to run peers' code at).
  std::optional<Isolation> wanted;
  // The process jail's warm guests per principal (ProcessJailOptions::warm_guests).
  std::uint32_t warm_guests = 4;
};

class JailSet {
 public:
  explicit JailSet(JailConfig config);
  ~JailSet();
  JailSet(const JailSet&) = delete;
  JailSet& operator=(const JailSet&) = delete;

  // Every level this build knows, weakest first.
  static const std::vector<Isolation>& levels();

  // The jail for `level`, started on first use (once, even under concurrent callers), or
  // sandbox_refused "refused by the sandbox: isolation level 'L' is not available on this
  // node: WHY" when it could not start.
  Result<Jail*> get(Isolation level);
  // Why `level` cannot run here (starting it if it was not tried), or null when it can.
  const std::string* unavailable(Isolation level);
  // The jail for `level` if it already started; never starts one.
  Jail* started(Isolation level) const;
  // The levels that run here (starting each), and in `why` "LEVEL: REASON; ..." for the others.
  std::vector<Isolation> available(std::string* why = nullptr);
  // The strongest level above `floor` that runs here (starting those it tries), else `floor`
  // (not started by this call).
  Isolation strongest(Isolation floor);

  Result<Value> run(Isolation level, const RunInput& input, HostCalls* host);
  Result<AgentOutcome> run_agent(Isolation level, const RunInput& input, const AgentInput& agent, HostCalls* host);

 private:
  struct Slot;
  Slot* slot(Isolation level) const;
  JailConfig config_;
  std::vector<std::unique_ptr<Slot>> slots_;  // one per entry of levels()
};

}  // namespace sojourn::sandbox
