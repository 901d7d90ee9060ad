// Test support: a TCP relay on loopback that forwards every connection to a target port
// and records the bytes clients send, as a network attacker on the path would capture them.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace sojourn::test {

class TcpRecorder {
 public:
  // Forwards to `target_port`, or (0) to the port forward_to() names later.
  explicit TcpRecorder(std::uint16_t target_port = 0) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // SAFETY: sockaddr_in is the IPv4 form of sockaddr; its size is passed along.
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(listen_fd_, 8);
    socklen_t len = sizeof addr;
    // SAFETY: as above.
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~TcpRecorder() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }
  TcpRecorder(const TcpRecorder&) = delete;
  TcpRecorder& operator=(const TcpRecorder&) = delete;

  std::uint16_t port() const { return port_; }
  void forward_to(std::uint16_t target_port) { target_port_ = target_port; }
  // Everything clients sent, connections one after another.
  std::vector<std::uint8_t> client_bytes() {
    std::lock_guard lock(mutex_);
    return sent_;
  }

 private:
  static int connect_to(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // SAFETY: as in the constructor.
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  // One thread relays every connection: poll over the listener and each pair of sockets.
  void serve() {
    struct Pair {
      int client, server;
    };
    std::vector<Pair> pairs;
    std::uint8_t buf[65536];
    while (!stop_) {
      std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
      for (const auto& p : pairs) {
        fds.push_back({p.client, POLLIN, 0});
        fds.push_back({p.server, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        int client = ::accept(listen_fd_, nullptr, nullptr);
        int server = client >= 0 ? connect_to(target_port_) : -1;
        if (server >= 0) pairs.push_back({client, server});
        else if (client >= 0) ::close(client);
      }
      // Only the pairs polled above have revents; one accepted just now waits for the next poll.
      const std::size_t polled = (fds.size() - 1) / 2;
      std::vector<Pair> alive;
      for (std::size_t i = 0; i < pairs.size(); ++i) {
        bool open = true;
        for (int side = 0; side < 2 && open && i < polled; ++side) {
          if (!(fds[1 + 2 * i + side].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          int from = side == 0 ? pairs[i].client : pairs[i].server;
          int to = side == 0 ? pairs[i].server : pairs[i].client;
          ssize_t n = ::recv(from, buf, sizeof buf, 0);
          if (n <= 0) {
            open = false;
            break;
          }
          if (side == 0) {
            std::lock_guard lock(mutex_);
            sent_.insert(sent_.end(), buf, buf + n);
          }
          ::send(to, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
        }
        if (open) {
          alive.push_back(pairs[i]);
        } else {
          ::close(pairs[i].client);
          ::close(pairs[i].server);
        }
      }
      pairs = std::move(alive);
    }
    for (const auto& p : pairs) {
      ::close(p.client);
      ::close(p.server);
    }
  }

  std::atomic<std::uint16_t> target_port_;
  std::uint16_t port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mutex_;
  std::vector<std::uint8_t> sent_;
};

}  // namespace sojourn::test
