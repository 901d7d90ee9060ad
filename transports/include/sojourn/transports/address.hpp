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

// True for 0.0.0.0 and :: (an address that means "every interface", not one to dial).
bool is_wildcard(const Address& a);
// An address of this host's interfaces to stand for a wildcard listener: the first up,
// non-loopback IPv4 address (for ::, else the first global IPv6 one), else the loopback
// address; `interface` gets its interface's name. Port as `bound`'s.
Address interface_address(const Address& bound, std::string* interface = nullptr);

}  // namespace sojourn
