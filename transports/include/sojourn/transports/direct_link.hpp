// Blocking requests that the calling thread carries itself: it writes the frame and reads
// the reply on a plain TCP connection it holds for the duration, so a blocking call is
// woken once (by its reply), not handed to the network thread and woken back from it.
// Thread-safe; each request takes a connection of its own from a small pool per peer.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "sojourn/core/error.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/transports/address.hpp"

namespace sojourn {

class DirectLinks {
 public:
  // At most `max_per_peer` connections to one peer, in use or idle.
  DirectLinks(std::uint32_t max_payload, std::chrono::milliseconds connect_timeout, std::size_t max_per_peer = 4);
  ~DirectLinks();
  DirectLinks(const DirectLinks&) = delete;
  DirectLinks& operator=(const DirectLinks&) = delete;

  // Sends one request to a TCP `peer` and waits for its reply, on this thread. nullopt:
  // every connection to that peer is in use (the caller goes through its shared link).
  // Errors are those of Link::request, with the same messages: connect_failed,
  // connection_closed, timeout, remote_protocol_error, frame_too_large; shutting_down
  // once close_all() ran.
  std::optional<Result<Frame>> request(const Address& peer, FrameKind kind, std::span<const std::uint8_t> payload,
                                       std::chrono::milliseconds timeout);
  // The same, for a caller that keeps the peer's `name` (peer.to_string()): no formatting
  // per request.
  std::optional<Result<Frame>> request(const Address& peer, const std::string& name, FrameKind kind,
                                       std::span<const std::uint8_t> payload, std::chrono::milliseconds timeout);
  // Closes every connection; requests blocked on one end with connection_closed ("closed
  // locally"), later ones with shutting_down.
  void close_all();
  // Connections open now, in use or idle (tests).
  std::size_t open_connections() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace sojourn
