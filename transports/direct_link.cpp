// Blocking requests carried by the calling thread on pooled plain TCP connections
// (direct_link.hpp). POSIX sockets, no Asio: nothing here touches the network thread.
#include "sojourn/transports/direct_link.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "sojourn/core/messages.hpp"

namespace sojourn {

namespace {

using Clock = std::chrono::steady_clock;

// One connection, held by one request at a time.
struct Connection {
  int fd = -1;
  std::uint64_t next_id = 1;
  // The fd is in blocking mode (every other call passes MSG_DONTWAIT) and a wait for a
  // reply is one recv bounded by SO_RCVTIMEO, not a poll then a recv; set to this (0: not yet).
  std::chrono::milliseconds receive_timeout{0};
  // Bytes read and not yet taken: [begin, end) of a buffer allocated once, never zero-filled
  // (a reply never has bytes after it, but a server may send a protocol_error right behind one).
  static constexpr std::size_t kBufferBytes = 16 * 1024;
  std::unique_ptr<std::uint8_t[]> buffer = std::make_unique_for_overwrite<std::uint8_t[]>(kBufferBytes);
  std::size_t begin = 0, end = 0;

  ~Connection() {
    if (fd >= 0) ::close(fd);
  }
  std::size_t buffered() const { return end - begin; }
};

std::string errno_text(int e) { return std::strerror(e); }

// Milliseconds to `deadline` for poll, rounded up so that poll never returns early; 0 once past it.
int poll_ms(Clock::time_point deadline) {
  auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<std::int64_t>(ms, 1 << 30));
}

// Waits for `events` on fd until `deadline`: 1 ready, 0 timed out, -1 error (errno).
int wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, poll_ms(deadline));
    if (n > 0) return 1;
    if (n == 0) return 0;
    if (errno != EINTR) return -1;
  }
}

// A new connection to `peer`, or the error of Link::request for it.
Result<std::unique_ptr<Connection>> connect_to(const Address& peer, std::chrono::milliseconds timeout) {
  const std::string name = peer.to_string();
  const auto deadline = Clock::now() + timeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(peer.port);
  if (int rc = ::getaddrinfo(peer.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return errors::connect_failed(name, ::gai_strerror(rc));
  }
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    auto c = std::make_unique<Connection>();
    c->fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (c->fd < 0) {
      why = errno_text(errno);
      continue;
    }
    int err = 0;
    if (::connect(c->fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        int ready = wait_for(c->fd, POLLOUT, deadline);
        if (ready == 0) {
          ::freeaddrinfo(found);
          return errors::connect_failed(name, "timed out after " + std::to_string(timeout.count()) + " ms");
        }
        socklen_t len = sizeof err;
        if (ready < 0) err = errno;
        else if (::getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      }
    }
    if (err != 0) {
      why = errno_text(err);
      continue;
    }
    int one = 1;
    ::setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // Blocking from now on: only the wait for a reply blocks (bounded by SO_RCVTIMEO).
    if (int flags = ::fcntl(c->fd, F_GETFL); flags >= 0) ::fcntl(c->fd, F_SETFL, flags & ~O_NONBLOCK);
    ::freeaddrinfo(found);
    return c;
  }
  ::freeaddrinfo(found);
  return errors::connect_failed(name, why);
}

// An idle connection the server closed (or sent something on) is not to be reused. The
// kernel is asked every time: skipping the poll for a connection used a moment ago saved a
// system call per blocking call but turned a server's stop right after a reply into
// connection_closed for the next call (client_test).
bool still_quiet(const Connection& c) {
  if (c.buffered() > 0) return false;
  pollfd p{c.fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

}  // namespace

struct DirectLinks::State {
  std::uint32_t max_payload;
  std::chrono::milliseconds connect_timeout;
  std::size_t max_per_peer;

  std::mutex mutex;
  bool closed = false;
  struct Peer {
    std::vector<std::unique_ptr<Connection>> idle;
    std::size_t open = 0;  // idle and in use
  };
  std::unordered_map<std::string, Peer> peers;
  std::unordered_set<int> busy;  // fds of connections in use: close_all shuts them down

  // Why the request on `c` failed, once the connection broke: "closed locally" when
  // close_all() did it.
  Error broken(const std::string& peer, const std::string& why) {
    std::lock_guard lock(mutex);
    return errors::connection_closed(peer, closed ? std::string("closed locally") : why);
  }
};

DirectLinks::DirectLinks(std::uint32_t max_payload, std::chrono::milliseconds connect_timeout, std::size_t max_per_peer)
    : state_(std::make_shared<State>()) {
  state_->max_payload = max_payload;
  state_->connect_timeout = connect_timeout;
  state_->max_per_peer = std::max<std::size_t>(1, max_per_peer);
}

DirectLinks::~DirectLinks() { close_all(); }

void DirectLinks::close_all() {
  std::lock_guard lock(state_->mutex);
  state_->closed = true;
  for (auto& [name, peer] : state_->peers) {
    peer.open -= peer.idle.size();
    peer.idle.clear();
  }
  // Shut down, not closed: the request holding one closes it, so its number is not reused under it.
  for (int fd : state_->busy) ::shutdown(fd, SHUT_RDWR);
}

std::size_t DirectLinks::open_connections() const {
  std::lock_guard lock(state_->mutex);
  std::size_t n = 0;
  for (const auto& [name, peer] : state_->peers) n += peer.open;
  return n;
}

namespace {

// Writes the frame (header and payload gathered in one system call when they fit).
Result<void> write_frame(Connection& c, const std::string& peer, FrameKind kind, std::uint64_t id,
                         std::span<const std::uint8_t> payload, Clock::time_point deadline) {
  const auto header = encode_header(FrameHeader{kind, 0, static_cast<std::uint32_t>(payload.size()), id});
  std::size_t sent = 0;
  const std::size_t total = header.size() + payload.size();
  while (sent < total) {
    iovec parts[2];
    int count = 0;
    if (sent < header.size()) {
      parts[count++] = iovec{const_cast<std::uint8_t*>(header.data() + sent), header.size() - sent};
      parts[count++] = iovec{const_cast<std::uint8_t*>(payload.data()), payload.size()};
    } else {
      const std::size_t at = sent - header.size();
      parts[count++] = iovec{const_cast<std::uint8_t*>(payload.data() + at), payload.size() - at};
    }
    msghdr msg{};
    msg.msg_iov = parts;
    msg.msg_iovlen = static_cast<std::size_t>(count);
    ssize_t n = ::sendmsg(c.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errors::connection_closed(peer, errno_text(errno));
    int ready = wait_for(c.fd, POLLOUT, deadline);
    if (ready == 0) return make_error(Errc::timeout, "");
    if (ready < 0) return errors::connection_closed(peer, errno_text(errno));
  }
  return {};
}

// Reads more bytes into c.buffer. Errors: timeout (empty message), connection_closed's
// reason as the message of an Errc::connection_closed error (the caller names the peer).
// `wait_first`: nothing is expected yet (a reply just asked for), so the first read blocks
// (one system call) rather than find nothing and poll.
Result<void> read_more(Connection& c, Clock::time_point deadline, bool wait_first) {
  // What is left is at most part of a header (a payload is taken as it comes): moved to the front.
  if (c.begin > 0) {
    std::memmove(c.buffer.get(), c.buffer.get() + c.begin, c.buffered());
    c.end -= c.begin;
    c.begin = 0;
  }
  int flags = MSG_DONTWAIT;
  if (wait_first) {
    // One blocking recv: the socket's receive timeout is the time left, give or take the
    // millisecond it is rounded to (and the kernel's tick); set again only when the time
    // left moved by more (a request with another timeout). A shorter one than the time
    // left never happens here, and would only end in the poll below.
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return make_error(Errc::timeout, "");
    if (left > c.receive_timeout || c.receive_timeout - left > std::chrono::milliseconds(1)) {
      timeval tv{static_cast<time_t>(left.count() / 1000), static_cast<suseconds_t>(left.count() % 1000 * 1000)};
      if (::setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0) c.receive_timeout = left;
    }
    if (c.receive_timeout.count() > 0 && c.receive_timeout - left <= std::chrono::milliseconds(1)) flags = 0;
  }
  for (;;) {
    ssize_t n = ::recv(c.fd, c.buffer.get() + c.end, Connection::kBufferBytes - c.end, flags);
    flags = MSG_DONTWAIT;  // a retry after EINTR or a timeout waits by poll, to the deadline
    if (n > 0) {
      c.end += static_cast<std::size_t>(n);
      return {};
    }
    if (n == 0) return make_error(Errc::connection_closed, "End of file");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return make_error(Errc::connection_closed, errno_text(errno));
    int ready = wait_for(c.fd, POLLIN, deadline);
    if (ready == 0) return make_error(Errc::timeout, "");
    if (ready < 0) return make_error(Errc::connection_closed, errno_text(errno));
  }
}

// The next whole frame. A failed read gives the same reasons as the async reader's.
Result<Frame> read_frame(Connection& c, std::uint32_t max_payload, Clock::time_point deadline) {
  while (c.buffered() < kFrameHeaderSize) {
    const std::size_t have = c.buffered();
    auto more = read_more(c, deadline, /*wait_first=*/have == 0);
    if (more) continue;
    if (more.error().code != Errc::connection_closed || have == 0) {
      if (more.error().code == Errc::connection_closed) {
        return make_error(Errc::connection_closed, "connection closed: " + more.error().message);
      }
      return more.error();
    }
    return make_error(Errc::truncated, "truncated frame: connection closed after " + std::to_string(have) + " of " +
                                           std::to_string(kFrameHeaderSize) + " header bytes");
  }
  std::span<const std::uint8_t, kFrameHeaderSize> head(c.buffer.get() + c.begin, kFrameHeaderSize);
  auto header = parse_header(head, max_payload);
  if (!header) return header.error();
  c.begin += kFrameHeaderSize;
  Frame frame;
  frame.header = *header;
  // The payload grows as its bytes arrive, never to what a header merely declares.
  while (frame.payload.size() < header->length) {
    if (c.buffered() == 0) {
      auto more = read_more(c, deadline, /*wait_first=*/false);
      if (!more && more.error().code == Errc::connection_closed) {
        return make_error(Errc::truncated, "truncated frame: connection closed after " +
                                               std::to_string(frame.payload.size()) + " of " +
                                               std::to_string(header->length) + " payload bytes");
      }
      if (!more) return more.error();
    }
    const std::size_t n = std::min<std::size_t>(header->length - frame.payload.size(), c.buffered());
    frame.payload.insert(frame.payload.end(), c.buffer.get() + c.begin, c.buffer.get() + c.begin + n);
    c.begin += n;
  }
  return frame;
}

}  // namespace

std::optional<Result<Frame>> DirectLinks::request(const Address& peer, FrameKind kind,
                                                  std::span<const std::uint8_t> payload,
                                                  std::chrono::milliseconds timeout) {
  return request(peer, peer.to_string(), kind, payload, timeout);
}

std::optional<Result<Frame>> DirectLinks::request(const Address& peer, const std::string& name, FrameKind kind,
                                                  std::span<const std::uint8_t> payload,
                                                  std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  auto state = state_;  // kept alive while this request holds a connection
  std::unique_ptr<Connection> c;
  // The peer's entry, looked up once: entries are never erased, and an unordered_map's
  // elements keep their addresses when it grows.
  State::Peer* p = nullptr;
  {
    std::lock_guard lock(state->mutex);
    if (state->closed) return Result<Frame>(errors::shutting_down());
    p = &state->peers[name];
    while (!p->idle.empty() && !c) {
      c = std::move(p->idle.back());
      p->idle.pop_back();
      if (!still_quiet(*c)) {
        c.reset();
        --p->open;
      }
    }
    if (!c && p->open >= state->max_per_peer) return std::nullopt;
    if (c) {
      state->busy.insert(c->fd);  // an idle one: in use from here, under the same lock
    } else {
      ++p->open;  // reserved for the connection made below
    }
  }
  auto release = [&](bool reuse) {
    std::lock_guard lock(state->mutex);
    if (c) state->busy.erase(c->fd);
    if (reuse && c && !state->closed) {
      p->idle.push_back(std::move(c));
    } else {
      c.reset();
      --p->open;
    }
  };
  if (!c) {
    auto made = connect_to(peer, state->connect_timeout);
    if (!made) {
      release(false);
      return Result<Frame>(made.error());
    }
    c = std::move(*made);
    std::lock_guard lock(state->mutex);
    if (state->closed) {
      c.reset();
      --p->open;
      return Result<Frame>(errors::connection_closed(name, "closed locally"));
    }
    state->busy.insert(c->fd);
  }
  if (payload.size() > state->max_payload) {
    release(true);
    return Result<Frame>(errors::frame_too_large(payload.size(), state->max_payload));
  }
  auto timed_out = [&] {
    return make_error(Errc::timeout, "request to " + name + " timed out after " + std::to_string(timeout.count()) + " ms");
  };
  const std::uint64_t id = c->next_id++;
  if (auto sent = write_frame(*c, name, kind, id, payload, deadline); !sent) {
    Error e = sent.error().code == Errc::timeout ? timed_out() : state->broken(name, sent.error().message);
    release(false);
    return Result<Frame>(std::move(e));
  }
  for (;;) {
    auto frame = read_frame(*c, state->max_payload, deadline);
    if (!frame) {
      // A late reply would arrive on this connection: it is not reused after any failure.
      Error e = frame.error().code == Errc::timeout ? timed_out() : state->broken(name, frame.error().message);
      release(false);
      return Result<Frame>(std::move(e));
    }
    if (frame->header.kind == FrameKind::protocol_error) {
      auto pe = decode_protocol_error(frame->payload);
      release(false);
      return Result<Frame>(errors::remote_protocol_error(name, pe ? pe->message : pe.error().message));
    }
    if (frame->header.kind != FrameKind::reply && frame->header.kind != FrameKind::pong) {
      release(false);
      return Result<Frame>(errors::connection_closed(
          name, "server sent a " + std::string(frame_kind_name(frame->header.kind)) + " frame"));
    }
    if (frame->header.request_id != id) continue;  // not ours: cannot happen on a connection of one request
    release(true);
    return Result<Frame>(std::move(*frame));
  }
}

}  // namespace sojourn
