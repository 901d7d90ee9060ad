// The small evaluation bench_lua_run and bench_warm_run time: the chunk, the host that answers
// its one node.call as the node's store does in bench_roundtrip, and the clock they read.
#pragma once

#include <chrono>
#include <string_view>

#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn::bench {

using Clock = std::chrono::steady_clock;

inline constexpr const char* kSmallEvalChunk = "local v = node.call('kv.get', 'k'); return v.x + 1";

// node.call('kv.get', 'k') answers {x = 1}.
struct StoreStub final : sandbox::HostCalls {
  Result<Value> call(std::string_view, const Value&) override {
    Value v = Value::table();
    v.set("x", 1);
    return v;
  }
};

inline double us_since(Clock::time_point t0) { return std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }

}  // namespace sojourn::bench
