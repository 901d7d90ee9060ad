// The calling side of Node's API, blocking and coroutine: requests go to the peer links on
// the network thread (peer_links.hpp), or, blocking ones on plain TCP, out of the calling
// thread itself (DirectLinks).
#include "agents/node_impl.hpp"  // first: brings <utility> before any Asio header
#include "agents/agent_runtime.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include "sojourn/agents/node_async.hpp"

namespace sojourn {

namespace {
// Why a blocking call cannot be made now, if it cannot.
std::optional<Error> cannot_block(NodeRuntime& runtime) {
  if (runtime.on_network_thread()) {
    return errors::invalid_argument("a blocking call on the node's own network thread would deadlock; use async_call");
  }
  if (runtime.shutting_down()) return errors::shutting_down();
  return std::nullopt;
}

template <class T>
Result<T> block_on(NodeRuntime& runtime, asio::awaitable<Result<T>> task) {
  if (auto no = cannot_block(runtime)) return *no;
  return asio::co_spawn(runtime.io(), std::move(task), asio::use_future).get();
}

// The peer a thread last named in a blocking request, parsed and formatted once: a
// blocking caller names the same peer call after call (parse_address and to_string were
// ~500 instructions of a ~5.6k-instruction call). Per thread: no lock. A text that does
// not parse is not kept (nullptr: the shared link's path reports it).
struct ParsedPeer {
  std::string text;
  Address address;
  std::string name;  // address.to_string()
};
const ParsedPeer* parsed_peer(std::string_view peer) {
  thread_local ParsedPeer last;
  thread_local bool valid = false;
  if (valid && last.text == peer) return &last;
  valid = false;
  auto address = parse_address(peer);
  if (!address) return nullptr;
  last.text.assign(peer);
  last.address = std::move(*address);
  last.name = last.address.to_string();
  valid = true;
  return &last;
}

// A blocking request: carried by the calling thread itself on a connection of its own
// (DirectLinks) when the peer is plain TCP without an emulated link, so it is woken once,
// by its reply; otherwise, or when every such connection to the peer is in use, handed to
// the network thread's shared link. TLS links stay on the network thread: the handshake
// and the proven peer id live there.
Result<Reply> blocking_request(Node& node, std::string_view peer, FrameKind kind, std::vector<std::uint8_t> payload,
                               std::chrono::milliseconds timeout) {
  auto& impl = node_impl(node);
  if (auto no = cannot_block(impl.runtime)) return *no;
  const ParsedPeer* parsed = parsed_peer(peer);
  const bool direct = parsed && parsed->address.kind == Address::Kind::tcp && !impl.trust.tls() &&
                      !impl.trust.tls_error() && impl.options.links.empty();
  if (direct) {
    if (auto frame = impl.links.direct().request(parsed->address, parsed->name, kind, payload, timeout)) {
      give_small_buffer(payload);  // sent: for this thread's next request
      if (!*frame) return frame->error();
      auto reply = decode_reply((*frame)->payload);
      give_small_buffer((*frame)->payload);
      if (!reply) return errors::remote_protocol_error(parsed->name, reply.error().message);
      return std::move(*reply);
    }
  }
  return block_on(impl.runtime, impl.links.request_peer(std::string(peer), kind, std::move(payload), timeout));
}

// Runs a request coroutine on the network thread and resumes the caller on its own executor.
template <class T>
asio::awaitable<Result<T>> on_network(NodeRuntime& runtime, asio::awaitable<Result<T>> task) {
  // Already on the network thread's executor: awaited in place, without a post there and back.
  // Plain statements around each co_await (g++ 12, see peer_links.cpp).
  asio::any_io_executor here = co_await asio::this_coro::executor;
  const bool in_place = here == runtime.executor();
  if (in_place) {
    Result<T> r = co_await std::move(task);
    co_return r;
  }
  Result<T> r = co_await asio::co_spawn(runtime.io(), std::move(task), asio::use_awaitable);
  co_return r;
}
}  // namespace

Result<Value> Node::call(std::string_view peer, std::string_view service, Value args) {
  CallRequest request;
  request.service = std::string(service);
  request.args = std::move(args);
  Result<Reply> reply = blocking_request(*this, peer, FrameKind::call, encode(request), impl_->options.request_timeout);
  if (!reply) return reply.error();
  if (reply->code != Errc::ok) return Error{reply->code, std::move(reply->message)};
  return std::move(reply->result);
}

Result<EvalResult> Node::eval(std::string_view peer, std::string_view source, Value args, const EvalOptions& options) {
  // A signed request names its destination's id, learned on the network thread's link.
  if (options.signing_key) {
    return block_on(impl_->runtime, impl_->links.eval_peer(std::string(peer), std::string(source), std::move(args), options));
  }
  EvalRequest request;
  request.source = std::string(source);
  request.chunk_name = options.chunk_name;
  request.args = std::move(args);
  request.limits = options.limits;
  request.isolation = options.isolation;
  const std::chrono::milliseconds timeout = options.timeout.count() > 0 ? options.timeout : impl_->options.request_timeout;
  Result<Reply> reply = blocking_request(*this, peer, FrameKind::eval, encode(request), timeout);
  if (!reply) return reply.error();
  if (reply->code != Errc::ok) return Error{reply->code, std::move(reply->message)};
  EvalResult out;
  out.results = std::move(reply->result);
  out.isolation = reply->isolation;
  return out;
}

// On the network thread, woken by the agent's end (the home's agent.wait, or this node's
// own tracking when it is the home), never by polling.
Result<AgentStatus> Node::wait_agent(std::string_view home, std::string_view agent_id, std::chrono::milliseconds timeout) {
  std::string at(home);
  if (at == advertised_address()) at.clear();
  return block_on(impl_->runtime, impl_->agents->wait_agent(std::move(at), std::string(agent_id), timeout));
}

asio::any_io_executor node_executor(Node& node) { return node_impl(node).runtime.executor(); }

asio::awaitable<Result<Value>> async_call(Node& node, std::string peer, std::string service, Value args) {
  auto& impl = node_impl(node);
  // on_network's choice made here: one coroutine frame less per call awaited in place.
  // Each branch has its own result: no placeholder error (a string made and freed per call).
  asio::any_io_executor here = co_await asio::this_coro::executor;
  if (here == impl.runtime.executor()) {
    Result<Value> r = co_await impl.links.call_peer(std::move(peer), std::move(service), std::move(args));
    co_return r;
  }
  Result<Value> r = co_await asio::co_spawn(
      impl.runtime.io(), impl.links.call_peer(std::move(peer), std::move(service), std::move(args)), asio::use_awaitable);
  co_return r;
}

asio::awaitable<Result<EvalResult>> async_eval(Node& node, std::string peer, std::string source, Value args,
                                               EvalOptions options) {
  auto& impl = node_impl(node);
  co_return co_await on_network(impl.runtime,
                                impl.links.eval_peer(std::move(peer), std::move(source), std::move(args), options));
}

}  // namespace sojourn

namespace sojourn {
asio::awaitable<Result<EvalResult>> async_eval(Node& node, std::string peer, std::string source, Value args) {
  EvalOptions defaults;
  return async_eval(node, std::move(peer), std::move(source), std::move(args), defaults);
}
}  // namespace sojourn
