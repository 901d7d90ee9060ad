// Shared by the pooled-state tests (lua_state_pool_test.cpp, lua_state_pool_confined_test.cpp):
// a run of a text as a principal, the state the pool would give a principal next, a run's results.
#pragma once

#include <doctest/doctest.h>

#include <cstddef>
#include <string_view>
#include <utility>

#include <luajit-2.1/lua.hpp>

#include "sandbox/lua/lua_state_pool.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace lua_pool_test {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::HostCalls;
using sojourn::sandbox::RunInput;
namespace detail = sojourn::sandbox::detail;

constexpr Limits kLimits{10'000'000, 16u << 20, 5000};

inline Result<Value> run(std::string_view source, std::string_view principal, Limits limits = kLimits, Value args = {},
                         HostCalls* host = nullptr, std::string_view chunk_name = {}) {
  RunInput input;
  input.source = source;
  input.chunk_name = chunk_name;
  input.args = std::move(args);
  input.limits = limits;
  input.principal = principal;
  return sojourn::sandbox::run_lua(input, host);
}

// The state the pool would give `principal` next (taken out and put back), or null when none
// of its states is idle.
inline lua_State* idle_state_of(std::string_view principal) {
  const std::size_t idle = detail::idle_pooled_states();
  detail::PooledStatePtr state = detail::take_pooled_state(principal);
  REQUIRE(state != nullptr);
  lua_State* L = detail::idle_pooled_states() < idle ? state->L : nullptr;
  if (L != nullptr) detail::return_pooled_state(std::move(state));
  return L;
}

inline Value ok_results(const Result<Value>& r) {
  if (!r.ok()) FAIL(r.error().message);
  return *r;
}

}  // namespace lua_pool_test
