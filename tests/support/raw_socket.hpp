// Test support: a blocking POSIX TCP client, independent of the transport under
// test, for sending hand-made (and malformed) bytes.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sojourn::test {

class RawSocket {
 public:
  explicit RawSocket(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // SAFETY: sockaddr_in is the IPv4 form of sockaddr; its size is passed along.
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawSocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return connected_; }
  bool send(const std::vector<std::uint8_t>& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }

  // What one read brings within `timeout_ms`; empty on silence or once the peer closed.
  std::vector<std::uint8_t> read_some(int timeout_ms) {
    std::uint8_t buf[4096];
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return {};
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return {};
    return std::vector<std::uint8_t>(buf, buf + n);
  }

  // Everything the peer sends until it closes, or until `timeout_ms` of silence.
  std::vector<std::uint8_t> read_until_closed(int timeout_ms, bool* closed = nullptr) {
    std::vector<std::uint8_t> out;
    std::uint8_t buf[4096];
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) <= 0) {
        if (closed) *closed = false;
        return out;
      }
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        if (closed) *closed = true;
        return out;
      }
      out.insert(out.end(), buf, buf + n);
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

}  // namespace sojourn::test
