// Test support for the trust tests: a port from an address, a fresh signing key, a policy
// from JSON, and one node listening on loopback.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "sojourn/core/signature.hpp"

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

}  // namespace sojourn::test
