// Parsing of peer addresses.
#include "sojourn/transports/address.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

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

bool is_wildcard(const Address& a) {
  if (a.kind != Address::Kind::tcp) return false;
  if (a.host == "0.0.0.0") return true;
  in6_addr v6{};
  return inet_pton(AF_INET6, a.host.c_str(), &v6) == 1 && IN6_IS_ADDR_UNSPECIFIED(&v6);
}

Address interface_address(const Address& bound, std::string* interface) {
  const bool v6_listener = bound.host != "0.0.0.0";  // [::] also takes IPv4 (dual stack)
  Address out;
  out.port = bound.port;
  std::string v4, v6, v4_if, v6_if;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) == 0) {
    for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
      if (i->ifa_addr == nullptr || (i->ifa_flags & IFF_UP) == 0 || (i->ifa_flags & IFF_LOOPBACK) != 0) continue;
      char text[INET6_ADDRSTRLEN] = {};
      if (i->ifa_addr->sa_family == AF_INET && v4.empty()) {
        // SAFETY: an AF_INET entry's address is a sockaddr_in.
        const auto* in = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
        if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof text) != nullptr) {
          v4 = text;
          v4_if = i->ifa_name;
        }
      } else if (i->ifa_addr->sa_family == AF_INET6 && v6.empty()) {
        // SAFETY: an AF_INET6 entry's address is a sockaddr_in6.
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr);
        if (IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr)) continue;  // needs a scope to dial
        if (inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text) != nullptr) {
          v6 = text;
          v6_if = i->ifa_name;
        }
      }
    }
    freeifaddrs(list);
  }
  if (!v4.empty()) {
    out.host = v4;
    if (interface != nullptr) *interface = v4_if;
  } else if (v6_listener && !v6.empty()) {
    out.host = v6;
    if (interface != nullptr) *interface = v6_if;
  } else {
    out.host = v6_listener ? "::1" : "127.0.0.1";
    if (interface != nullptr) *interface = "lo";
  }
  return out;
}

}  // namespace sojourn
