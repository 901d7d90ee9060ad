// Internal testing seam, not installed: faults a node injects into its own replies, for the
// tests of exactly-once protocols (tests/agents/mobility_test.cpp). Not part of the API.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/agents/node.hpp"

namespace sojourn::testing {

// A call to a service for which `drop` returns true runs, but its reply is not sent and the
// connection is closed (as if it broke in between); the reply to a call of a service for
// which `delay` returns a duration is held back that long. Over TCP and TLS listeners (not
// in-process). Empty functions: no fault. May be set before or after listen().
void set_fault_hooks(Node& node, std::function<bool(std::string_view service)> drop,
                     std::function<std::chrono::milliseconds(std::string_view service)> delay = {});

// Every heap image this node sends in a TRANSFER first goes through `rewrite`, which may change
// its bytes and the SHA-256 the TRANSFER names for it (a hostile or broken source, for the
// strong mobility tests). Set it before any strong agent leaves the node. Empty: none.
void set_image_hook(Node& node, std::function<void(std::vector<std::uint8_t>& image, std::string& sha256)> rewrite);

}  // namespace sojourn::testing
