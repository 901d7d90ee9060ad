// JailSet: the table of isolation levels (how each one starts, what its log lines call it)
// and one lazily started jail per level, with the reason a level is missing.
#include "sojourn/sandbox/jail.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>

#include "sojourn/core/log.hpp"
#include "sojourn/sandbox/microvm_jail.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace sojourn::sandbox {

Error strong_refused(Isolation level, std::string_view why) {
  return make_error(Errc::sandbox_refused, "refused by the sandbox: strong mobility needs the process or microvm level (" +
                                               std::string(isolation_name(level)) + ": " + std::string(why) + ")");
}

namespace {

// One row per level, weakest first. A new level is a Jail class and a row here.
struct LevelEntry {
  Isolation level;
  const char* name;     // in log lines ("process jail ready ..."); null: never logged
  bool absence_usual;   // missing on most machines: logged as a fact unless it is wanted
  bool at_once;         // started with the set (it costs nothing), not on first use
  Result<std::unique_ptr<Jail>> (*start)(const JailConfig& config);
};

Result<std::unique_ptr<Jail>> start_trusted(const JailConfig&) { return std::unique_ptr<Jail>(std::make_unique<TrustedJail>()); }

Result<std::unique_ptr<Jail>> start_process(const JailConfig& config) {
  ProcessJailOptions o;
  o.guest_path = config.guest_path;
  o.warm_guests = config.warm_guests;
  auto started = ProcessJail::start(o);
  if (!started) return started.error();
  return std::unique_ptr<Jail>(std::move(*started));
}

Result<std::unique_ptr<Jail>> start_microvm(const JailConfig& config) {
  MicrovmJailOptions o;
  o.guest_path = config.guest_path;
  // Room for the largest Lua heap a request may ask for.
  if (config.max_memory_bytes != 0) o.memory_bytes = std::max(o.memory_bytes, config.max_memory_bytes + kGuestOverheadBytes);
  auto started = MicrovmJail::start(o);
  if (!started) return started.error();
  return std::unique_ptr<Jail>(std::move(*started));
}

constexpr LevelEntry kLevels[] = {
    {Isolation::trusted, nullptr, false, true, &start_trusted},
    {Isolation::process, "process jail", false, false, &start_process},
    {Isolation::microvm, "microVM jail", true, false, &start_microvm},
};

Error level_unavailable(Isolation level, const std::string& why) {
  return make_error(Errc::sandbox_refused, "refused by the sandbox: isolation level '" + std::string(isolation_name(level)) +
                                               "' is not available on this node" + (why.empty() ? "" : ": " + why));
}

}  // namespace

struct JailSet::Slot {
  const LevelEntry& entry;
  std::once_flag once;
  std::unique_ptr<Jail> jail;
  std::atomic<Jail*> ready{nullptr};  // jail.get() once it started: read without the once
  std::string error;
  explicit Slot(const LevelEntry& e) : entry(e) {}
};

const std::vector<Isolation>& JailSet::levels() {
  static const std::vector<Isolation> all = [] {
    std::vector<Isolation> v;
    for (const LevelEntry& e : kLevels) v.push_back(e.level);
    return v;
  }();
  return all;
}

JailSet::JailSet(JailConfig config) : config_(std::move(config)) {
  if (config_.owner.empty()) config_.owner = "jails";
  for (const LevelEntry& e : kLevels) slots_.push_back(std::make_unique<Slot>(e));
  for (const LevelEntry& e : kLevels) {
    if (e.at_once) unavailable(e.level);
  }
}

JailSet::~JailSet() = default;

JailSet::Slot* JailSet::slot(Isolation level) const {
  for (const auto& s : slots_) {
    if (s->entry.level == level) return s.get();
  }
  return nullptr;
}

const std::string* JailSet::unavailable(Isolation level) {
  static const std::string unknown = "unknown level";
  Slot* s = slot(level);
  if (s == nullptr) return &unknown;
  std::call_once(s->once, [&] {
    const LevelEntry& e = s->entry;
    auto started = e.start(config_);
    if (!started) {
      s->error = started.error().message;
      if (e.name == nullptr) return;
      const std::string line = config_.owner + ": no " + e.name + ": " + s->error;
      if (e.absence_usual && config_.wanted != e.level) {
        log_info("node", line);
      } else {
        log_warn("node", line);
      }
      return;
    }
    s->jail = std::move(*started);
    s->ready.store(s->jail.get());
    if (e.name != nullptr) log_info("node", config_.owner + ": " + e.name + " ready (" + s->jail->describe() + ")");
  });
  return s->ready.load() == nullptr ? &s->error : nullptr;
}

Result<Jail*> JailSet::get(Isolation level) {
  if (const std::string* why = unavailable(level)) return level_unavailable(level, *why);
  return slot(level)->ready.load();
}

Jail* JailSet::started(Isolation level) const {
  Slot* s = slot(level);
  return s == nullptr ? nullptr : s->ready.load();
}

std::vector<Isolation> JailSet::available(std::string* why) {
  std::vector<Isolation> here;
  std::string reasons;
  for (Isolation level : levels()) {
    if (const std::string* missing = unavailable(level)) {
      reasons += (reasons.empty() ? "" : "; ") + std::string(isolation_name(level)) + ": " + *missing;
    } else {
      here.push_back(level);
    }
  }
  if (why != nullptr) *why = reasons;
  return here;
}

Isolation JailSet::strongest(Isolation floor) {
  const auto& all = levels();
  // The floor itself is not started here: it starts when code first runs at it.
  for (auto it = all.rbegin(); it != all.rend() && *it > floor; ++it) {
    if (unavailable(*it) == nullptr) return *it;
  }
  return floor;
}

Result<Value> JailSet::run(Isolation level, const RunInput& input, HostCalls* host) {
  Result<Jail*> jail = get(level);
  if (!jail) return jail.error();
  return (*jail)->run(input, host);
}

Result<AgentOutcome> JailSet::run_agent(Isolation level, const RunInput& input, const AgentInput& agent,
                                        HostCalls* host) {
  Result<Jail*> jail = get(level);
  if (!jail) return jail.error();
  return (*jail)->run_agent(input, agent, host);
}

}  // namespace sojourn::sandbox
