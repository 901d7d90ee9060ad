// The calling side of a Node: links to peers (one multiplexed connection each),
// the blocking API and the coroutine API.
#include "agents/node_impl.hpp"  // first: brings <utility> before any Asio header
#include "agents/agent_runtime.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include "sojourn/agents/node_async.hpp"

namespace sojourn {

namespace {
Result<Value> reply_to_result(Result<Reply> reply) {
  if (!reply) return reply.error();
  if (reply->code != Errc::ok) return Error{reply->code, std::move(reply->message)};
  return std::move(reply->result);
}
}  // namespace

asio::awaitable<Result<Reply>> Node::Impl::request_peer(const std::string& peer, FrameKind kind,
                                                        std::vector<std::uint8_t> payload,
                                                        std::chrono::milliseconds timeout) {
  auto self = shared_from_this();
  if (shutting_down) co_return errors::shutting_down();
  if (tls_error) co_return *tls_error;
  auto address = parse_address(peer);
  if (!address) co_return address.error();
  std::string key = address->to_string();
  auto it = links.find(key);
  if (it == links.end() || !it->second->usable()) {
    it = links.insert_or_assign(key, make_link(io.get_executor(), *address, transport_options())).first;
  }
  std::shared_ptr<Link> link = it->second;
  auto frame = co_await link->request(kind, std::move(payload), timeout);
  if (!frame) co_return frame.error();
  auto reply = decode_reply(frame->payload);
  if (!reply) {
    // A peer that sends an unreadable reply is not to be trusted with the connection.
    link->close();
    co_return make_error(Errc::remote_protocol_error, "peer " + key + " reported a protocol error: " + reply.error().message);
  }
  co_return std::move(*reply);
}

// Temporaries inside a co_await expression are kept to plain locals here: g++ 12
// miscompiles some (aggregates, braced temporaries) across the suspension point.
asio::awaitable<Result<Value>> Node::Impl::call_peer(std::string peer, std::string service, Value args) {
  CallRequest request;
  request.service = std::move(service);
  request.args = std::move(args);
  std::vector<std::uint8_t> payload = encode(request);
  Result<Reply> reply = co_await request_peer(peer, FrameKind::call, std::move(payload), options.request_timeout);
  co_return reply_to_result(std::move(reply));
}

asio::awaitable<Result<Value>> Node::Impl::eval_peer(std::string peer, std::string source, Value args, EvalOptions eo) {
  Result<EvalResult> r = co_await evaluate_peer(std::move(peer), std::move(source), std::move(args), std::move(eo));
  if (!r) co_return r.error();
  co_return std::move(r->results);
}

asio::awaitable<Result<EvalResult>> Node::Impl::evaluate_peer(std::string peer, std::string source, Value args,
                                                              EvalOptions eo) {
  EvalRequest request;
  request.source = std::move(source);
  request.chunk_name = eo.chunk_name;
  request.args = std::move(args);
  request.limits = eo.limits;
  request.isolation = eo.isolation;
  request.destination = destination_for(peer);  // signed with the rest: refused at any other node
  if (eo.sign) sign_eval(request, *eo.sign, eo.signature_lifetime);
  std::chrono::milliseconds timeout = eo.timeout.count() > 0 ? eo.timeout : options.request_timeout;
  std::vector<std::uint8_t> payload = encode(request);
  Result<Reply> reply = co_await request_peer(peer, FrameKind::eval, std::move(payload), timeout);
  if (!reply) co_return reply.error();
  if (reply->code != Errc::ok) co_return Error{reply->code, std::move(reply->message)};
  EvalResult out;
  out.results = std::move(reply->result);
  out.isolation = reply->isolation;
  co_return out;
}

namespace {
template <class T>
Result<T> block_on(Node::Impl& impl, asio::awaitable<Result<T>> task) {
  if (impl.io.get_executor().running_in_this_thread()) {
    return errors::invalid_argument("a blocking call on the node's own network thread would deadlock; use async_call");
  }
  if (impl.shutting_down) return errors::shutting_down();
  return asio::co_spawn(impl.io, std::move(task), asio::use_future).get();
}
}  // namespace

Result<Value> Node::call(std::string_view peer, std::string_view service, Value args) {
  return block_on(*impl_, impl_->call_peer(std::string(peer), std::string(service), std::move(args)));
}

Result<EvalResult> Node::evaluate(std::string_view peer, std::string_view source, Value args, const EvalOptions& options) {
  return block_on(*impl_, impl_->evaluate_peer(std::string(peer), std::string(source), std::move(args), options));
}

Result<Value> Node::eval(std::string_view peer, std::string_view source, Value args, const EvalOptions& options) {
  return block_on(*impl_, impl_->eval_peer(std::string(peer), std::string(source), std::move(args), options));
}

// On the network thread, woken by the agent's end (the home's agent.wait, or this node's
// own tracking when it is the home), never by polling.
Result<AgentStatus> Node::wait_agent(std::string_view home, std::string_view agent_id, std::chrono::milliseconds timeout) {
  std::string at(home);
  if (at == advertised_address()) at.clear();
  return block_on(*impl_, impl_->agents->wait_agent(std::move(at), std::string(agent_id), timeout));
}

asio::any_io_executor node_executor(Node& node) { return node_impl(node).io.get_executor(); }

asio::awaitable<Result<Value>> async_call(Node& node, std::string peer, std::string service, Value args) {
  auto& impl = node_impl(node);
  co_return co_await asio::co_spawn(impl.io, impl.call_peer(std::move(peer), std::move(service), std::move(args)),
                                    asio::use_awaitable);
}

asio::awaitable<Result<Value>> async_eval(Node& node, std::string peer, std::string source, Value args,
                                          EvalOptions options) {
  auto& impl = node_impl(node);
  co_return co_await asio::co_spawn(impl.io, impl.eval_peer(std::move(peer), std::move(source), std::move(args), options),
                                    asio::use_awaitable);
}

}  // namespace sojourn

namespace sojourn {
asio::awaitable<Result<Value>> async_eval(Node& node, std::string peer, std::string source, Value args) {
  EvalOptions defaults;
  return async_eval(node, std::move(peer), std::move(source), std::move(args), defaults);
}
}  // namespace sojourn
