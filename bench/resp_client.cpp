// The RESP2 client of the benchmarks: a blocking POSIX socket, a send buffer that
// pipelined commands accumulate in, and an incremental reply parser.
#include "bench/resp_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>

namespace sojourn::bench {

namespace {

std::runtime_error errno_error(const std::string& what) {
  return std::runtime_error("redis: " + what + ": " + std::strerror(errno));
}

std::int64_t parse_int(std::string_view text) {
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) {
    throw std::runtime_error("redis: malformed integer in reply: '" + std::string(text) + "'");
  }
  return v;
}

// Replies nest only as deep as EVAL results can; this bounds recursion on garbage.
constexpr int kMaxDepth = 16;

}  // namespace

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

RespClient::RespClient(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
  if (fd_.get() < 0) throw errno_error("socket");
  int one = 1;
  if (::setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) throw errno_error("TCP_NODELAY");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // SAFETY: sockaddr_in is the sockaddr variant for AF_INET; the length passed is its size.
  if (::connect(fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    throw errno_error("cannot connect to 127.0.0.1:" + std::to_string(port));
  }
}

void RespClient::queue(std::initializer_list<std::string_view> args) {
  out_ += '*';
  out_ += std::to_string(args.size());
  out_ += "\r\n";
  for (std::string_view a : args) {
    out_ += '$';
    out_ += std::to_string(a.size());
    out_ += "\r\n";
    out_ += a;
    out_ += "\r\n";
  }
}

void RespClient::flush() {
  std::size_t sent = 0;
  while (sent < out_.size()) {
    ssize_t n = ::send(fd_.get(), out_.data() + sent, out_.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("send");
    }
    sent += static_cast<std::size_t>(n);
  }
  out_.clear();
}

void RespClient::receive_some() {
  // Drop what has been parsed before growing the buffer again.
  if (in_pos_ == in_.size()) {
    in_.clear();
    in_pos_ = 0;
  } else if (in_pos_ > (64u << 10)) {
    in_.erase(0, in_pos_);
    in_pos_ = 0;
  }
  char chunk[64 << 10];
  for (;;) {
    ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw errno_error("recv");
    if (n == 0) throw std::runtime_error("redis: connection closed by the server");
    in_.append(chunk, static_cast<std::size_t>(n));
    return;
  }
}

bool RespClient::parse_at(std::size_t& pos, RespReply& out, int depth) const {
  if (depth > kMaxDepth) throw std::runtime_error("redis: reply nested too deeply");
  if (pos >= in_.size()) return false;
  std::size_t eol = in_.find("\r\n", pos + 1);
  if (eol == std::string::npos) return false;
  const char kind = in_[pos];
  std::string_view line(in_.data() + pos + 1, eol - pos - 1);
  std::size_t next = eol + 2;
  switch (kind) {
    case '+':
    case '-':
      out.type = kind == '+' ? RespReply::Type::simple : RespReply::Type::error;
      out.text.assign(line);
      break;
    case ':':
      out.type = RespReply::Type::integer;
      out.integer = parse_int(line);
      break;
    case '$': {
      std::int64_t len = parse_int(line);
      if (len < 0) {
        out.type = RespReply::Type::nil;
        break;
      }
      auto n = static_cast<std::size_t>(len);
      if (in_.size() < next + n + 2) return false;
      out.type = RespReply::Type::bulk;
      out.text.assign(in_, next, n);
      next += n + 2;
      break;
    }
    case '*': {
      std::int64_t count = parse_int(line);
      out.items.clear();
      if (count < 0) {
        out.type = RespReply::Type::nil;
        break;
      }
      out.type = RespReply::Type::array;
      for (std::int64_t i = 0; i < count; ++i) {
        RespReply item;
        if (!parse_at(next, item, depth + 1)) return false;
        out.items.push_back(std::move(item));
      }
      break;
    }
    default:
      throw std::runtime_error(std::string("redis: malformed reply starting with byte ") +
                               std::to_string(static_cast<unsigned char>(kind)));
  }
  pos = next;
  return true;
}

bool RespClient::try_parse(RespReply& out) {
  out = RespReply{};
  std::size_t pos = in_pos_;
  if (!parse_at(pos, out, 0)) return false;
  in_pos_ = pos;
  return true;
}

RespReply RespClient::read_reply() {
  RespReply reply;
  while (!try_parse(reply)) receive_some();
  return reply;
}

std::size_t RespClient::read_ready(std::vector<RespReply>& ready) {
  ready.clear();
  RespReply reply;
  while (ready.empty()) {
    while (try_parse(reply)) ready.push_back(std::move(reply));
    if (ready.empty()) receive_some();
  }
  return ready.size();
}

RespReply RespClient::command(std::initializer_list<std::string_view> args) {
  queue(args);
  flush();
  return read_reply();
}

std::string describe(const RespReply& reply) {
  switch (reply.type) {
    // Appending rather than `"+" + text`: g++ 12 warns (-Wrestrict) on the latter.
    case RespReply::Type::simple: return std::string("+").append(reply.text);
    case RespReply::Type::error: return std::string("-").append(reply.text);
    case RespReply::Type::integer: return std::string(":").append(std::to_string(reply.integer));
    case RespReply::Type::bulk: return std::string("\"").append(reply.text).append("\"");
    case RespReply::Type::nil: return "(nil)";
    case RespReply::Type::array: {
      std::string s = "[";
      for (std::size_t i = 0; i < reply.items.size(); ++i) {
        if (i) s += ", ";
        s += describe(reply.items[i]);
      }
      return s + "]";
    }
  }
  return "?";
}

}  // namespace sojourn::bench
