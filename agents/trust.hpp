// Internal: the node's replay guard (nonces and expiry times of signed requests and agent
// transfers) and the message-rate limiter the policy's messages_per_second sets.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "sojourn/core/error.hpp"

namespace sojourn {

// Remembers each nonce until its expiry time, so a message is accepted once and only
// before it expires. Thread-safe.
class ReplayGuard {
 public:
  // Expiry times further ahead than this are refused: the guard would have to remember
  // their nonces that long.
  // `clock` gives the time expiries are checked against, in Unix ms (empty: the system clock).
  explicit ReplayGuard(std::chrono::milliseconds max_lifetime, std::function<std::int64_t()> clock = {})
      : max_lifetime_(max_lifetime), clock_(std::move(clock)) {}

  // Errors, WHAT naming the message (e.g. "remote evaluation"):
  //   expired  "expired: WHAT expired N ms ago"
  //   expired  "expired: WHAT expires in N ms, more than this node's limit of M ms"
  //   replayed "replayed: WHAT with nonce N16 was accepted before"
  //   invalid_argument "invalid argument: WHAT has no nonce"
  // With a keeper (a data dir), the nonce is kept there before admit returns, unless `keep`
  // is false (an agent TRANSFER keeps its nonce in its COMMIT's transaction); a keeper's
  // error refuses the message and forgets the nonce.
  Result<void> admit(std::string_view nonce, std::int64_t expires_unix_ms, const std::string& what, bool keep = true);
  using Keeper = std::function<Result<void>(std::string_view nonce, std::int64_t expires_unix_ms)>;
  void set_keeper(Keeper keeper);  // before messages arrive
  // A nonce kept before a restart (the node's store), remembered until it expires.
  void restore(std::string nonce, std::int64_t expires_unix_ms);
  // Checks the expiry only (a retried agent TRANSFER is answered before its nonce is).
  Result<void> check_expiry(std::int64_t expires_unix_ms, const std::string& what) const;
  std::size_t remembered();
  // Forgets the nonces whose expiry has passed (their messages are refused by it now). admit
  // does this at most once a second; the node's sweep (prune_interval) calls it too, so an
  // idle node forgets them as well.
  void prune();

 private:
  std::int64_t now_ms() const;
  Result<void> admit_here(std::string_view nonce, std::int64_t expires_unix_ms, const std::string& what);
  void prune_locked(std::int64_t now);  // under mutex_

  std::chrono::milliseconds max_lifetime_;
  std::function<std::int64_t()> clock_;
  std::mutex mutex_;
  std::unordered_map<std::string, std::int64_t> seen_;  // nonce -> expiry
  Keeper keeper_;
  std::int64_t next_prune_ = 0;
};

// One notion of "the node a message is addressed to", shared by agent TRANSFERs and signed
// remote evaluations: the node's id (NodeTrust::node_id: its TLS key fingerprint, or the id
// in its data dir), however it was dialed. The sender learns it from node.info, once per
// link (over TLS: checked against the handshake), the receiver compares it with its own.
std::string destination_for(std::string_view node_id);
// replayed "replayed: WHAT is addressed to node TO, not to this node (SELF)" ("no node" for an
// empty TO): a message bound to another node, or to none, is refused before it is used.
Result<void> check_addressed_to(std::string_view to, std::string_view self, const std::string& what);

// At most `per_second` events in any one-second window (0: no limit). Thread-safe.
class RateLimiter {
 public:
  explicit RateLimiter(std::uint32_t per_second) : per_second_(per_second) {}
  // quota_exhausted "rate limit of N messages per second exceeded (policy rule RULE)"
  Result<void> take(const std::string& rule);

 private:
  std::uint32_t per_second_;
  std::mutex mutex_;
  std::chrono::steady_clock::time_point window_start_{};
  std::uint32_t in_window_ = 0;
};

}  // namespace sojourn
