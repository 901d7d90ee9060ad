// A warm guest's kept chunks (sandbox/guest/warm_state.cpp) under weak agent steps, in
// process: a step's chunk is compiled into the prepared state's snapshot before its first
// step and reused by the next steps of the same chunk name and text only; a run sees the
// environment alone (its memory count included), and nothing a step leaves reaches the next.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "sandbox/guest/arena.hpp"
#include "sandbox/guest/warm_state.hpp"
#include "sandbox/lua/lua_heap.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "tests/process/arena_region.hpp"

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::AgentInput;
using sojourn::sandbox::AgentOutcome;
using sojourn::sandbox::RunInput;
using sojourn::sandbox::guest::FixedArena;
namespace guest = sojourn::sandbox::guest;

namespace {

constexpr std::uint64_t kQuota = 16u << 20;

// The arena a guest of that quota has, installed under Lua with a prepared state in it; taken
// away again (the prepared state set aside) when the case ends.
struct WarmArena {
  WarmArena() : region(guest::arena_bytes_for_quota(kQuota)), arena(FixedArena::over(region.aligned(), region.size)) {
    sojourn::sandbox::use_lua_heap(&arena);
    guest::prepare_warm_state(false);
  }
  ~WarmArena() {
    guest::set_aside_warm_state();
    sojourn::sandbox::use_lua_heap(nullptr);
  }
  arena_test::Region region;
  FixedArena arena;
};

RunInput input_of(std::string_view source, std::string chunk_name = "agent") {
  RunInput input;
  input.source = source;
  input.chunk_name = std::move(chunk_name);
  input.limits = Limits{1'000'000, kQuota, 5000};
  return input;
}

// One weak step (entry `start`, state {n = 0}), and the arena back to the snapshot after it.
Result<AgentOutcome> step(std::string_view source, std::string chunk_name = "agent") {
  Value state = Value::table();
  state.set("n", std::int64_t{0});
  Result<AgentOutcome> out = guest::run_weak_agent(input_of(source, std::move(chunk_name)), AgentInput{"start", state, Value::table()}, nullptr);
  guest::reset_after_run();
  return out;
}

std::string mark_of(std::string_view source, std::string chunk_name = "agent") {
  Result<AgentOutcome> out = step(source, std::move(chunk_name));
  REQUIRE_MESSAGE(out.ok(), (out.ok() ? "" : out.error().message));
  CHECK(out->went);
  return out->state.get("mark").as_string();
}

// Two chunks of the same name and length that differ in one byte.
constexpr const char* kChunkA = "function start(s) s.mark = 'A' agent.go('peer B', 'next') end";
constexpr const char* kChunkB = "function start(s) s.mark = 'B' agent.go('peer B', 'next') end";

}  // namespace

TEST_CASE("a kept agent chunk is reused only for the same chunk name and text") {
  WarmArena warm;
  const std::size_t hits0 = guest::warm_state_stats().chunk_hits;
  const std::size_t kept0 = guest::warm_state_stats().cached_chunks;
  for (int i = 0; i < 3; ++i) CHECK(mark_of(kChunkA) == "A");  // compiled into the snapshot, then reused
  CHECK(guest::warm_state_stats().cached_chunks == kept0 + 1);
  CHECK(guest::warm_state_stats().chunk_hits == hits0 + 3);
  // Another text under the same name runs its own code, never the kept chunk.
  for (int i = 0; i < 3; ++i) CHECK(mark_of(kChunkB) == "B");
  CHECK(guest::warm_state_stats().cached_chunks == kept0 + 2);
  CHECK(guest::warm_state_stats().chunk_hits == hits0 + 6);
  CHECK(mark_of(kChunkA) == "A");
  // The same text under another name: its errors name its own chunk.
  constexpr const char* kFails = "function start(s) error('boom') end";
  for (int i = 0; i < 3; ++i) {
    Result<AgentOutcome> failed = step(kFails, "first");
    REQUIRE_FALSE(failed.ok());
    CHECK(failed.error().message.find("first:1: boom") != std::string::npos);
  }
  const std::size_t hits = guest::warm_state_stats().chunk_hits;
  Result<AgentOutcome> renamed = step(kFails, "second");
  REQUIRE_FALSE(renamed.ok());
  CAPTURE(renamed.error().message);
  CHECK(renamed.error().message.find("second:1: boom") != std::string::npos);
  CHECK(renamed.error().message.find("first") == std::string::npos);
  CHECK(guest::warm_state_stats().chunk_hits == hits);  // compiled from its text, under its own name
}

TEST_CASE("steps of a kept chunk see nothing an earlier step left, and a run sees the environment alone") {
  WarmArena warm;
  constexpr const char* kLook = "return collectgarbage('count'), type(leaked), ('a'):upper(), type(table.insert)";
  const auto look = [&] {
    Result<Value> r = guest::run_weak(input_of(kLook, "look"), nullptr);
    guest::reset_after_run();
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    return std::to_string(r->get(1).as_number()) + " " + r->get(2).as_string() + " " + r->get(3).as_string() + " " +
           r->get(4).as_string();
  };
  const std::string before = look();
  CHECK(before.find(" nil A function") != std::string::npos);
  // Each step reports what it found, then changes globals, a library function and the string
  // metatable.
  constexpr const char* kPolluter = R"(
    function start(s)
      s.mark = type(leaked) .. ' ' .. ('a'):upper() .. ' ' .. type(table.insert) .. ' ' .. tostring(getmetatable('').__index.leaked)
      leaked = 'by the agent'
      string.upper = function() return 'pwned' end
      getmetatable('').__index.leaked = 'via the metatable'
      table.insert = nil
      pad = string.rep('x', 1024 * 1024)
    end
    local go = agent.go
    start = (function(inner) return function(s) inner(s) go('peer B', 'next') end end)(start))";
  const std::size_t hits0 = guest::warm_state_stats().chunk_hits;
  for (int i = 0; i < 5; ++i) CHECK(mark_of(kPolluter) == "nil A function nil");
  CHECK(guest::warm_state_stats().chunk_hits == hits0 + 5);
  // A run after them sees what it saw before: even its memory count (kept chunks are hidden).
  CHECK(look() == before);
}

TEST_CASE("a chunk that does not compile is never kept, and its steps fail in their own words") {
  WarmArena warm;
  const std::size_t kept0 = guest::warm_state_stats().cached_chunks;
  for (int i = 0; i < 4; ++i) {
    Result<AgentOutcome> out = step("function start(s) if end", "broken");
    REQUIRE_FALSE(out.ok());
    CHECK(out.error().code == Errc::lua_error);
    CHECK(out.error().message.find("broken:1:") != std::string::npos);
    CHECK(guest::warm_state_stats().cached_chunks == kept0);
  }
  // Bytecode is refused before anything is compiled, however often it comes.
  for (int i = 0; i < 3; ++i) {
    Result<AgentOutcome> out = step("\x1bLJ fake", "bytes");
    REQUIRE_FALSE(out.ok());
    CHECK(out.error().code == Errc::sandbox_refused);
  }
  CHECK(guest::warm_state_stats().cached_chunks == kept0);
}
