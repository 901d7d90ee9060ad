// The only way sojourn code includes Boost.Asio's coroutine types. Asio 1.18's
// awaitable.hpp uses std::exchange without including <utility> (an error with g++ 12
// in C++20 mode), so <utility> must come first.
#pragma once

#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

namespace sojourn {
namespace asio = boost::asio;
}  // namespace sojourn
