// One run inside a guest: decode the request, run_lua with a HostCalls that crosses the
// channel, encode the outcome. Errors keep the trusted level's exact messages because the
// same run_lua produces them.
#include "sandbox/guest/guest_serve.hpp"

#include <unistd.h>

#include <cerrno>
#include <exception>
#include <new>
#include <string>

#include "sandbox/guest/jail_child.hpp"
#include "sandbox/lua/lua_limits.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::sandbox::guest {

namespace {

using channel::Kind;

// The host checks each frame against the run's memory limit; this only guards the guest
// against a broken host.
constexpr std::uint32_t kMaxRequestBytes = 1u << 30;

bool read_exact(int fd, std::uint8_t* at, std::size_t n) {
  while (n > 0) {
    const ssize_t got = ::read(fd, at, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    at += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

class ChannelHost final : public HostCalls {
 public:
  explicit ChannelHost(int fd) : fd_(fd) {}

  Result<Value> call(std::string_view service, const Value& args) override {
    channel::HostCall request{std::string(service), args};
    if (!write_all(fd_, channel::encode_frame(request))) return broken();
    std::optional<Frame> frame = read_frame(fd_, kMaxRequestBytes);
    if (!frame || frame->kind != Kind::host_reply) return broken();
    Result<channel::HostReply> reply = channel::decode_payload<channel::HostReply>(frame->payload);
    if (!reply) return reply.error();
    if (reply->code != 0) return make_error(static_cast<Errc>(reply->code), std::move(reply->message));
    return std::move(reply->value);
  }

 private:
  static Error broken() { return errors::internal("the guest's channel to its host broke"); }
  int fd_;
};

channel::RunDone outcome_of(const Result<Value>& result) {
  channel::RunDone done;
  if (result) {
    done.value = *result;
  } else {
    done.code = static_cast<std::uint16_t>(result.error().code);
    done.message = result.error().message;
  }
  return done;
}

}  // namespace

std::optional<Frame> read_frame(int fd, std::uint32_t max_payload) {
  std::uint8_t header[channel::kHeaderBytes];
  if (!read_exact(fd, header, sizeof header)) return std::nullopt;
  const channel::FrameHeader h = channel::parse_header(header);
  if (h.length > max_payload) return std::nullopt;
  Frame frame{h.kind, std::vector<std::uint8_t>(h.length)};
  if (!read_exact(fd, frame.payload.data(), frame.payload.size())) return std::nullopt;
  return frame;
}

bool write_all(int fd, std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return true;
}

namespace {

RunInput input_of(const channel::RunRequest& request) {
  RunInput input;
  input.source = request.source;
  input.chunk_name = request.chunk_name;
  input.args = request.args.is_table() ? request.args : Value::table();
  input.limits = request.limits;
  input.allow_jit = request.allow_jit;
  return input;
}

// Unjailed (--serve), the arena is mapped here for the request's quota; in a jailed
// guest it was mapped before the filter.
Result<void> ensure_arena(const Limits& limits) {
  if (installed_lua_heap() != nullptr) return {};
  return install_arena(limits.memory_bytes);
}

channel::AgentDone agent_done_of(const Result<AgentOutcome>& outcome) {
  channel::AgentDone done;
  if (!outcome) {
    done.code = static_cast<std::uint16_t>(outcome.error().code);
    done.message = outcome.error().message;
    return done;
  }
  done.results = outcome->results;
  done.state = outcome->state;
  done.went = outcome->went;
  done.waits = outcome->waits;
  done.go_peer = outcome->go_peer;
  done.go_entry = outcome->go_entry;
  done.instructions = outcome->instructions;
  return done;
}

// The answer frame for one request frame.
std::vector<std::uint8_t> serve_request(int fd, const Frame& frame, Limits& limits) {
  ChannelHost channel_host(fd);
  if (frame.kind == Kind::agent) {
    Result<channel::AgentRequest> request = channel::decode_payload<channel::AgentRequest>(frame.payload);
    if (!request) return channel::encode_frame(agent_done_of(request.error()));
    limits = request->run.limits;
    if (Result<void> arena = ensure_arena(limits); !arena) return channel::encode_frame(agent_done_of(arena.error()));
    run_test_hook(request->run.source);
    const AgentInput agent{request->entry, request->state, request->info};
    HostCalls* host = request->run.has_host ? &channel_host : nullptr;
    return channel::encode_frame(agent_done_of(run_agent(input_of(request->run), agent, host)));
  }
  Result<channel::RunRequest> request = channel::decode_payload<channel::RunRequest>(frame.payload);
  if (!request) return channel::encode_frame(outcome_of(request.error()));
  limits = request->limits;
  if (Result<void> arena = ensure_arena(limits); !arena) return channel::encode_frame(outcome_of(arena.error()));
  run_test_hook(request->source);
  return channel::encode_frame(outcome_of(run_lua(input_of(*request), request->has_host ? &channel_host : nullptr)));
}

}  // namespace

void serve_one_run(int fd) {
  Limits limits;
  Kind kind = Kind::run;
  try {
    std::optional<Frame> frame = read_frame(fd, kMaxRequestBytes);
    if (!frame || (frame->kind != Kind::run && frame->kind != Kind::agent)) return;
    kind = frame->kind;
    write_all(fd, serve_request(fd, *frame, limits));
  } catch (const std::bad_alloc&) {
    // The C++ heap ran into RLIMIT_AS; the arena refuses Lua allocations before that.
    const Error error = detail::limit_error(Errc::memory_limit, limits);
    write_all(fd, kind == Kind::agent ? channel::encode_frame(agent_done_of(error)) : channel::encode_frame(outcome_of(error)));
  } catch (const std::exception& e) {
    const Error error = make_error(Errc::internal, std::string("internal error: guest: ") + e.what());
    write_all(fd, kind == Kind::agent ? channel::encode_frame(agent_done_of(error)) : channel::encode_frame(outcome_of(error)));
  }
}

}  // namespace sojourn::sandbox::guest
