// Parsing of peer addresses.
#include "sojourn/transports/address.hpp"

#include <charconv>

namespace sojourn {

std::string Address::to_string() const {
  if (kind == Kind::inproc) return "inproc://" + name;
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

Result<Address> parse_address(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return errors::bad_address(text, why);
  };
  Address a;
  constexpr std::string_view inproc = "inproc://";
  if (text.substr(0, inproc.size()) == inproc) {
    a.kind = Address::Kind::inproc;
    a.name = std::string(text.substr(inproc.size()));
    if (a.name.empty()) return bad("empty in-process name");
    return a;
  }
  std::size_t colon;
  if (!text.empty() && text.front() == '[') {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad("expected [v6-address]:port");
    }
    a.host = std::string(text.substr(1, close - 1));
    colon = close + 1;
  } else {
    colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("expected host:port");
    a.host = std::string(text.substr(0, colon));
    if (a.host.find(':') != std::string::npos) return bad("an IPv6 address needs brackets: [addr]:port");
  }
  if (a.host.empty()) return bad("empty host");
  std::string_view port = text.substr(colon + 1);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || port.empty() || value > 65535) {
    return bad("port must be a number from 0 to 65535");
  }
  a.port = static_cast<std::uint16_t>(value);
  return a;
}

}  // namespace sojourn
