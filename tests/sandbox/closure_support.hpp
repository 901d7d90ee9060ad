// Helpers shared by the closure tests: runs, and the trip over the wire codec.
#pragma once

#include <doctest/doctest.h>

#include <string>

#include "sojourn/core/messages.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "tests/support/jail_levels.hpp"
#include "tests/support/time_scale.hpp"

#include <luajit-2.1/lua.hpp>

#include "sandbox/lua/lua_source_scan.hpp"
#include "sandbox/lua/lua_value.hpp"

namespace closure_test {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::RunInput;
namespace scan = sojourn::sandbox::lua;

inline constexpr std::uint64_t kMemory = 16u << 20;

// One chunk at the level under test.
template <class Level>
Result<Value> run(std::string_view source, Value args = {}, std::uint64_t memory = kMemory) {
  RunInput input;
  input.source = source;
  input.args = std::move(args);
  input.limits = Limits{10'000'000, memory, test_support::scaled_ms(5000)};  // not about the deadline
  return Level::run(input, nullptr);
}

// What a peer receives: the value through the wire codec.
inline Value over_the_wire(const Value& v) {
  auto back = sojourn::decode_value(sojourn::encode_value(v));
  REQUIRE(back.ok());
  return *back;
}

// Runs `source` and returns its results after a trip over the wire.
template <class Level>
Value run_and_send(std::string_view source, Value args = {}) {
  auto r = run<Level>(source, std::move(args));
  if (!r.ok()) FAIL(r.error().message);
  return over_the_wire(*r);
}

inline void check_error(const Result<Value>& r, Errc code, const std::string& message) {
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == code);
  CHECK(r.error().message == message);
}

}  // namespace closure_test
