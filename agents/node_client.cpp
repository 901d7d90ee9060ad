// The calling side of Node's API, blocking and coroutine: requests go to the peer links on
// the network thread (peer_links.hpp).
#include "agents/node_impl.hpp"  // first: brings <utility> before any Asio header
#include "agents/agent_runtime.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include "sojourn/agents/node_async.hpp"

namespace sojourn {

namespace {
template <class T>
Result<T> block_on(NodeRuntime& runtime, asio::awaitable<Result<T>> task) {
  if (runtime.on_network_thread()) {
    return errors::invalid_argument("a blocking call on the node's own network thread would deadlock; use async_call");
  }
  if (runtime.shutting_down()) return errors::shutting_down();
  return asio::co_spawn(runtime.io(), std::move(task), asio::use_future).get();
}
}  // namespace

Result<Value> Node::call(std::string_view peer, std::string_view service, Value args) {
  return block_on(impl_->runtime, impl_->links.call_peer(std::string(peer), std::string(service), std::move(args)));
}

Result<EvalResult> Node::eval(std::string_view peer, std::string_view source, Value args, const EvalOptions& options) {
  return block_on(impl_->runtime, impl_->links.eval_peer(std::string(peer), std::string(source), std::move(args), options));
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
  co_return co_await asio::co_spawn(impl.runtime.io(),
                                    impl.links.call_peer(std::move(peer), std::move(service), std::move(args)),
                                    asio::use_awaitable);
}

asio::awaitable<Result<EvalResult>> async_eval(Node& node, std::string peer, std::string source, Value args,
                                               EvalOptions options) {
  auto& impl = node_impl(node);
  co_return co_await asio::co_spawn(impl.runtime.io(),
                                    impl.links.eval_peer(std::move(peer), std::move(source), std::move(args), options),
                                    asio::use_awaitable);
}

}  // namespace sojourn

namespace sojourn {
asio::awaitable<Result<EvalResult>> async_eval(Node& node, std::string peer, std::string source, Value args) {
  EvalOptions defaults;
  return async_eval(node, std::move(peer), std::move(source), std::move(args), defaults);
}
}  // namespace sojourn
