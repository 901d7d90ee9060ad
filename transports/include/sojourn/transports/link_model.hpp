// Emulated links for experiments: per destination, a one-way delay, jitter, a bandwidth
// (a token bucket on the bytes a node writes) and a connection set-up cost. A node applies
// its link to what it sends, so a round trip between two configured nodes costs two delays.
// Standard library only: NodeOptions carries a LinkModel. docs/experiments.md.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"

namespace sojourn {

struct LinkSpec {
  std::chrono::microseconds delay{0};   // one way, added to every frame sent
  std::chrono::microseconds jitter{0};  // each frame's delay is delay + U(-jitter, +jitter), at least 0
  std::uint64_t bandwidth_bps = 0;      // bits per second the sender may write; 0: unlimited
  std::uint64_t burst_bytes = 0;        // the token bucket's depth: bytes sent at once after idle
  std::chrono::microseconds setup{0};   // paid once by the side that opens a connection
  // "delay:40ms,jitter:1ms,bw:100mbit,burst:16KB,setup:80ms" (only the fields set).
  std::string to_string() const;
};

// One rule: what a node sends to HOST:PORT (PORT "*" or left out: every port of HOST; HOST
// "*": every destination) crosses this link. The most specific rule wins.
struct LinkRule {
  std::string host;                  // "*" for any
  std::optional<std::uint16_t> port; // empty for any
  LinkSpec spec;
};

struct LinkModel {
  std::vector<LinkRule> rules;
  std::uint64_t seed = 1;  // the jitter's random sequence: the same seed, the same delays
  // Set: counts the bytes of every frame sent over these rules (an experiment's wire bytes).
  std::shared_ptr<std::atomic<std::uint64_t>> sent_bytes;
  bool empty() const { return rules.empty(); }
  // The rule for a destination, or null: exact HOST:PORT, then HOST, then "*".
  const LinkRule* match(std::string_view host, std::uint16_t port) const;
};

// Parsers; errors are invalid_argument with the exact text below.
//   "invalid argument: bad duration 'TEXT': ..."   ("40ms", "1.5s", "250us", "0")
Result<std::chrono::microseconds> parse_duration(std::string_view text);
//   "invalid argument: bad bandwidth 'TEXT': ..." ("100mbit", "1gbit", "750kbit", "8000bit", "12.5MB/s")
Result<std::uint64_t> parse_bandwidth(std::string_view text);
//   "invalid argument: bad size 'TEXT': ..."      ("200B", "64KB", "2KiB", "16MB": KB = 1000 B, KiB = 1024 B)
Result<std::uint64_t> parse_size(std::string_view text);
//   "invalid argument: bad link 'TEXT': ..."       ("delay:40ms,bw:100mbit", keys delay jitter bw burst setup)
Result<LinkSpec> parse_link_spec(std::string_view text);
//   "HOST:PORT=SPEC", "HOST=SPEC", "*=SPEC" ("[v6]:PORT=SPEC" too)
Result<LinkRule> parse_link_rule(std::string_view text);

// A link of a named profile, given as the round trip and the bandwidth a path has.
struct ProfileLink {
  std::string name;                 // "wa-virginia"
  double rtt_ms = 0;
  std::uint64_t bandwidth_bps = 0;
  std::string what;                 // one line on what it stands for
};

struct LinkProfile {
  std::string name;    // "seed-wan"
  std::string source;  // where the figures come from (docs/experiments.md quotes it)
  std::vector<ProfileLink> links;
};

const std::vector<LinkProfile>& link_profiles();
//   "invalid argument: unknown link profile 'NAME' (known: seed-wan, lan, wifi, 3g)"
Result<LinkProfile> find_link_profile(std::string_view name);
// "PROFILE" (its first link) or "PROFILE:LINK" as the one-way spec each side applies:
// delay = RTT / 2, the profile's bandwidth, and set-up = one RTT (TCP's handshake).
Result<LinkSpec> profile_link_spec(std::string_view name);
LinkSpec one_way_spec(const ProfileLink& link);

// The sending side of one connection: when each frame may leave and when it arrives. Frames
// keep their order (TCP's), so a frame never arrives before the one sent before it.
class LinkShaper {
 public:
  using Clock = std::chrono::steady_clock;
  LinkShaper(LinkSpec spec, std::uint64_t seed, std::shared_ptr<std::atomic<std::uint64_t>> sent_bytes = nullptr);
  // The time a frame of `bytes` written at `now` reaches the peer.
  Clock::time_point arrival(Clock::time_point now, std::size_t bytes);
  const LinkSpec& spec() const { return spec_; }

 private:
  LinkSpec spec_;
  std::mt19937_64 random_;
  std::shared_ptr<std::atomic<std::uint64_t>> sent_bytes_;
  double tokens_ = 0;                // bytes; may go below 0 while a big frame drains
  Clock::time_point refilled_{};     // when tokens_ was last brought up to date
  Clock::time_point last_arrival_{};
};

// A stable 64-bit mix of a seed and a destination, so each connection draws its own jitter.
std::uint64_t link_seed(std::uint64_t seed, std::string_view destination);

}  // namespace sojourn
