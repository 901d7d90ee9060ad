// The replay guard and the rate limiter.
#include "agents/trust.hpp"

#include "agents/agent_record.hpp"

namespace sojourn {

std::string destination_for(std::string_view node_id) { return std::string(node_id); }

Result<void> check_addressed_to(std::string_view to, std::string_view self, const std::string& what) {
  if (!to.empty() && to == self) return {};
  return make_error(Errc::replayed, "replayed: " + what + " is addressed to " + (to.empty() ? std::string("no node") : "node " + std::string(to)) +
                                        ", not to this node (" + std::string(self) + ")");
}

std::int64_t ReplayGuard::now_ms() const { return clock_ ? clock_() : unix_ms_now(); }

Result<void> ReplayGuard::check_expiry(std::int64_t expires_unix_ms, const std::string& what) const {
  const std::int64_t now = now_ms();
  if (expires_unix_ms <= now) {
    return make_error(Errc::expired, "expired: " + what + " expired " + std::to_string(now - expires_unix_ms) + " ms ago");
  }
  if (expires_unix_ms - now > max_lifetime_.count()) {
    return make_error(Errc::expired, "expired: " + what + " expires in " + std::to_string(expires_unix_ms - now) +
                                         " ms, more than this node's limit of " + std::to_string(max_lifetime_.count()) + " ms");
  }
  return {};
}

void ReplayGuard::set_keeper(Keeper keeper) {
  std::lock_guard lock(mutex_);
  keeper_ = std::move(keeper);
}

void ReplayGuard::restore(std::string nonce, std::int64_t expires_unix_ms) {
  std::lock_guard lock(mutex_);
  seen_.emplace(std::move(nonce), expires_unix_ms);
}

Result<void> ReplayGuard::admit(std::string_view nonce, std::int64_t expires_unix_ms, const std::string& what, bool keep) {
  if (auto admitted = admit_here(nonce, expires_unix_ms, what); !admitted) return admitted;
  Keeper keeper;
  {
    std::lock_guard lock(mutex_);
    if (keep) keeper = keeper_;
  }
  if (!keeper) return {};
  // Kept before the message is used: after a restart the same message is still a replay.
  if (auto kept = keeper(nonce, expires_unix_ms); !kept) {
    std::lock_guard lock(mutex_);
    seen_.erase(std::string(nonce));
    return kept;
  }
  return {};
}

Result<void> ReplayGuard::admit_here(std::string_view nonce, std::int64_t expires_unix_ms, const std::string& what) {
  if (nonce.empty()) return errors::invalid_argument(what + " has no nonce");
  if (auto fresh = check_expiry(expires_unix_ms, what); !fresh) return fresh;
  const std::int64_t now = now_ms();
  std::lock_guard lock(mutex_);
  if (now >= next_prune_) prune_locked(now);
  if (!seen_.emplace(std::string(nonce), expires_unix_ms).second) {
    return make_error(Errc::replayed, "replayed: " + what + " with nonce " + std::string(nonce.substr(0, 16)) +
                                          " was accepted before");
  }
  return {};
}

void ReplayGuard::prune_locked(std::int64_t now) {
  // Expired nonces can be forgotten: their messages are refused by their expiry now.
  for (auto it = seen_.begin(); it != seen_.end();) it = it->second <= now ? seen_.erase(it) : std::next(it);
  next_prune_ = now + 1000;
}

void ReplayGuard::prune() {
  const std::int64_t now = now_ms();
  std::lock_guard lock(mutex_);
  prune_locked(now);
}

std::size_t ReplayGuard::remembered() {
  std::lock_guard lock(mutex_);
  return seen_.size();
}

Result<void> RateLimiter::take(const std::string& rule) {
  if (per_second_ == 0) return {};
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  if (now - window_start_ >= std::chrono::seconds(1)) {
    window_start_ = now;
    in_window_ = 0;
  }
  if (in_window_ >= per_second_) {
    return make_error(Errc::quota_exhausted, "rate limit of " + std::to_string(per_second_) +
                                                 " messages per second exceeded (policy rule " + rule + ")");
  }
  ++in_window_;
  return {};
}

}  // namespace sojourn
