// The coroutine API of Node (Boost.Asio 1.18 awaitables). The calls may be awaited
// from any executor; the work runs on the node's network thread and the result comes
// back to the awaiting coroutine's executor.
#pragma once

#include <string>

#include "sojourn/agents/node.hpp"
#include "sojourn/transports/asio.hpp"

namespace sojourn {

// The executor of the node's network thread (to co_spawn application coroutines on).
asio::any_io_executor node_executor(Node& node);

asio::awaitable<Result<Value>> async_call(Node& node, std::string peer, std::string service, Value args);
// A remote evaluation: its results and the isolation level it ran at (Node::eval).
asio::awaitable<Result<EvalResult>> async_eval(Node& node, std::string peer, std::string source, Value args,
                                               EvalOptions options);
// With the serving node's default limits. A plain function, not a default argument:
// g++ 12 destroys a braced default-argument temporary too early inside a co_await
// expression, so the EvalOptions is made here, outside the caller's coroutine.
asio::awaitable<Result<EvalResult>> async_eval(Node& node, std::string peer, std::string source, Value args);

}  // namespace sojourn
