// Shared by the warm-guest tests (warm_guest_test, warm_guest_cpu_test, warm_guest_carry_test):
// a jail with a warm pool, a run as a principal, and a wait for idle warm guests.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>
#include <thread>
#include <utility>

#include "sojourn/sandbox/lua_sandbox.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace warm_test {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::ProcessJail;
using sojourn::sandbox::ProcessJailOptions;
using sojourn::sandbox::RunInput;

inline constexpr std::uint64_t kMemory = 16u << 20;

inline Limits limits(std::uint32_t wall_ms = 5000) { return Limits{10'000'000, kMemory, wall_ms}; }

// A jail keeping `warm_guests` per principal; the test guest (sandbox/guest/test_hooks.cpp)
// when `test_guest`.
inline std::unique_ptr<ProcessJail> start(std::uint32_t warm_guests, bool test_guest = false) {
  ProcessJailOptions options;
  options.warm_guests = warm_guests;
  if (test_guest) options.guest_path = SOJOURN_TEST_GUEST_PATH;
  auto started = ProcessJail::start(options);
  REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
  return std::move(*started);
}

inline Result<Value> run(ProcessJail& jail, std::string_view principal, std::string_view source, Limits l = limits()) {
  RunInput input;
  input.source = source;
  input.limits = l;
  input.principal = principal;
  return jail.run(input, nullptr);
}

inline std::int64_t first_integer(const Result<Value>& r) {
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return r->get(1).as_integer();
}

// Waits (up to 10 s) until the jail has `n` idle warm guests.
inline bool wait_for_warm(const ProcessJail& jail, std::uint64_t n) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (jail.status().guests_warm < n) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace warm_test
