// Peer addresses: "host:port" or "[v6]:port" for TCP, "inproc://name" for nodes in
// the same process.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "sojourn/core/error.hpp"

namespace sojourn {

struct Address {
  enum class Kind { tcp, inproc };
  Kind kind = Kind::tcp;
  std::string host;  // tcp: a name or a literal address (without brackets)
  std::uint16_t port = 0;
  std::string name;  // inproc

  std::string to_string() const;
};

//   bad_address "bad address 'TEXT': ..."
Result<Address> parse_address(std::string_view text);

}  // namespace sojourn
