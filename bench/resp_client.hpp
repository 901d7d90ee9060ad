// A minimal Redis client for the benchmarks: RESP2 over one blocking loopback TCP
// socket, with pipelining (queue many commands, read their replies in order). Just
// enough to drive GET, SET, SCRIPT LOAD and EVALSHA without a new dependency.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace sojourn::bench {

// A file descriptor closed once, on destruction (close is never retried on EINTR).
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd();
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const noexcept { return fd_; }

 private:
  int fd_ = -1;
};

struct RespReply {
  enum class Type { simple, error, integer, bulk, nil, array };
  Type type = Type::nil;
  std::string text;       // simple, error, bulk
  std::int64_t integer = 0;
  std::vector<RespReply> items;  // array
};

// Errors (connection lost, a malformed reply) are thrown as std::runtime_error:
// a benchmark has nothing better to do than stop and say why.
class RespClient {
 public:
  // Connects to 127.0.0.1:port with TCP_NODELAY, as a latency-sensitive client would.
  explicit RespClient(std::uint16_t port);

  // Appends one command to the send buffer (an array of bulk strings).
  void queue(std::initializer_list<std::string_view> args);
  // Writes everything queued so far.
  void flush();
  // Blocks until one whole reply has arrived, and returns it.
  RespReply read_reply();
  // Replaces `ready` with every whole reply that has arrived, blocking until there is
  // at least one: the pipelining loop's way to learn how many requests completed.
  std::size_t read_ready(std::vector<RespReply>& ready);

  // queue + flush + read_reply.
  RespReply command(std::initializer_list<std::string_view> args);

 private:
  void receive_some();
  // Parses one reply at in_pos_ if it is complete; leaves in_pos_ alone otherwise.
  bool try_parse(RespReply& out);
  bool parse_at(std::size_t& pos, RespReply& out, int depth) const;

  UniqueFd fd_;
  std::string out_;
  std::string in_;
  std::size_t in_pos_ = 0;
};

// A readable rendering for error messages.
std::string describe(const RespReply& reply);

}  // namespace sojourn::bench
