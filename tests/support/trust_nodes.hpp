// Test support for the trust tests: a port from an address, a fresh signing key, a policy
// from JSON, one node listening on loopback, and one hand-made frame exchanged with a node.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/frame.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/signature.hpp"
#include "tests/support/raw_socket.hpp"

namespace sojourn::test {

inline std::uint16_t port_of(const std::string& address) {
  return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

inline std::shared_ptr<const SigningKey> new_key() {
  auto key = SigningKey::generate();
  REQUIRE(key.ok());
  return std::make_shared<const SigningKey>(std::move(*key));
}

inline std::shared_ptr<const Policy> policy_from(const std::string& json) {
  auto p = Policy::parse(json);
  if (!p) FAIL(p.error().message);
  return std::make_shared<const Policy>(std::move(*p));
}

// A node on 127.0.0.1 (any port) with quick retries; `tweak` adjusts its options first.
inline std::unique_ptr<Node> start_node(const std::string& name, std::function<void(NodeOptions&)> tweak = {}) {
  NodeOptions o;
  o.name = name;
  o.retry_backoff = std::chrono::milliseconds(10);
  if (tweak) tweak(o);
  auto node = std::make_unique<Node>(o);
  REQUIRE(node->listen("127.0.0.1:0").ok());
  return node;
}

// Sends one frame on a new connection to `port` and returns the node's reply to it.
inline Reply exchange_frame(std::uint16_t port, FrameKind kind, std::uint64_t request_id,
                            const std::vector<std::uint8_t>& payload) {
  RawSocket socket(port);
  REQUIRE(socket.connected());
  REQUIRE(socket.send(encode_frame(kind, request_id, payload)));
  FrameDecoder decoder;
  for (int i = 0; i < 200 && decoder.frames().empty(); ++i) REQUIRE(decoder.feed(socket.read_until_closed(20)).ok());
  REQUIRE(decoder.frames().size() == 1);
  auto reply = decode_reply(decoder.frames()[0].payload);
  REQUIRE(reply.ok());
  return *reply;
}

}  // namespace sojourn::test
