// A warm guest's compiled-chunk cache (sandbox/guest/warm_state.cpp), in process: a chunk run
// again is taken from the snapshot instead of parsed, and that changes nothing a run sees
// (globals, the library, error messages, the chunk's name); bytecode is never taken in.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>

#include <lua.hpp>

#include "sandbox/guest/arena.hpp"
#include "sandbox/guest/warm_state.hpp"
#include "sandbox/lua/lua_heap.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"
#include "tests/process/arena_region.hpp"

namespace {

using sojourn::Errc;
using sojourn::Limits;
using sojourn::Result;
using sojourn::Value;
using sojourn::sandbox::RunInput;
namespace guest = sojourn::sandbox::guest;

// The prepared state in an arena of its own for the test's length; dropped at its end.
struct WarmArena {
  arena_test::Region region{guest::arena_bytes_for_quota(16u << 20)};
  guest::FixedArena arena = guest::FixedArena::over(region.aligned(), region.size);
  WarmArena() {
    sojourn::sandbox::use_lua_heap(&arena);
    guest::prepare_warm_state(false);
  }
  ~WarmArena() {
    guest::set_aside_warm_state();
    sojourn::sandbox::use_lua_heap(nullptr);
  }
};

Result<Value> run(std::string_view source, std::string_view chunk_name = "eval") {
  RunInput input;
  input.source = source;
  input.chunk_name = chunk_name;
  input.args = Value::table();
  input.limits = Limits{1'000'000, 16u << 20, 5000};
  Result<Value> result = guest::run_weak(input, nullptr);
  guest::reset_after_run();
  return result;
}

std::int64_t first_integer(const Result<Value>& r) {
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return r->get(Value(std::int64_t{1})).as_integer();
}

void* plain_alloc(void*, void* block, std::size_t, std::size_t size) {
  if (size == 0) {
    std::free(block);
    return nullptr;
  }
  return std::realloc(block, size);
}

// What string.dump makes of `source` in a plain state outside the arena.
std::string bytecode_of(const char* source) {
  lua_State* L = lua_newstate(plain_alloc, nullptr);
  REQUIRE(L != nullptr);
  REQUIRE(luaL_loadstring(L, source) == 0);
  std::string out;
  REQUIRE(lua_dump(
              L,
              [](lua_State*, const void* p, std::size_t n, void* ud) {
                static_cast<std::string*>(ud)->append(static_cast<const char*>(p), n);
                return 0;
              },
              &out) == 0);
  lua_close(L);
  return out;
}

}  // namespace

TEST_CASE("a warm guest's chunk run again is taken compiled from its snapshot, and starts from the same globals") {
  WarmArena warm;
  const std::string_view chunk = "counter = (counter or 0) + 1; string.rep = nil; return counter";
  const guest::WarmStateStats before = guest::warm_state_stats();
  for (int i = 0; i < 5; ++i) CHECK(first_integer(run(chunk)) == 1);
  const guest::WarmStateStats after = guest::warm_state_stats();
  CHECK(after.cached_chunks == before.cached_chunks + 1);
  CHECK(after.chunk_hits == before.chunk_hits + 5);  // compiled before its first run
  // What the cached chunk did to the library is gone for another chunk too.
  Result<Value> rep = run("return type(string.rep), counter == nil");
  REQUIRE(rep.ok());
  CHECK(rep->get(Value(std::int64_t{1})).as_string() == "function");
  CHECK(rep->get(Value(std::int64_t{2})).as_bool());
}

TEST_CASE("a cached chunk's errors carry the same message and the run's own chunk name") {
  WarmArena warm;
  const std::string_view chunk = "local t = {}\nerror('boom ' .. #t)";
  Result<Value> first = run(chunk, "script");
  REQUIRE_FALSE(first.ok());
  for (int i = 0; i < 3; ++i) {
    Result<Value> again = run(chunk, "script");
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().message == first.error().message);
  }
  CHECK(first.error().message.find("script:2") != std::string::npos);
  // The same text under another name is not the cached function (its name is in it).
  Result<Value> other = run(chunk, "other");
  REQUIRE_FALSE(other.ok());
  CHECK(other.error().message.find("other:2") != std::string::npos);
  CHECK(other.error().message.find("script") == std::string::npos);
  CHECK(guest::warm_state_stats().chunk_hits >= 3);
}

TEST_CASE("bytecode sent as a chunk is refused every time and never enters the cache") {
  WarmArena warm;
  const std::string code = bytecode_of("return 42");
  REQUIRE(code.front() == '\x1b');
  const guest::WarmStateStats before = guest::warm_state_stats();
  for (int i = 0; i < 3; ++i) {
    Result<Value> r = run(code);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::sandbox_refused);
  }
  // Bytecode behind a text prefix is not Lua text either: the parser refuses it, as uncached.
  const std::string hidden = std::string("\n") + code;
  for (int i = 0; i < 2; ++i) CHECK_FALSE(run(hidden).ok());
  const guest::WarmStateStats after = guest::warm_state_stats();
  CHECK(after.cached_chunks == before.cached_chunks);
  CHECK(after.chunk_hits == before.chunk_hits);
  // The source text of that bytecode is cached as text and runs as before.
  CHECK(first_integer(run("return 42")) == 42);
  CHECK(first_integer(run("return 42")) == 42);
  CHECK(guest::warm_state_stats().chunk_hits == after.chunk_hits + 2);
}

TEST_CASE("the cache is bounded: chunks past its count are parsed per run and still right") {
  WarmArena warm;
  const std::size_t hits = guest::warm_state_stats().chunk_hits;
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 24; ++i) {
      const std::string chunk = "return " + std::to_string(i) + " + 1";
      CHECK(first_integer(run(chunk)) == i + 1);
    }
  }
  const guest::WarmStateStats stats = guest::warm_state_stats();
  CHECK(stats.cached_chunks == 16);
  CHECK(stats.chunk_hits == hits + 32);  // the first 16, in both rounds
  // A long chunk is not kept.
  std::string big = "local s = 0\n";
  while (big.size() < 9000) big += "s = s + 1\n";
  big += "return s";
  const std::int64_t lines = first_integer(run(big));
  CHECK(first_integer(run(big)) == lines);
  CHECK(guest::warm_state_stats().chunk_hits == hits + 32);
}

TEST_CASE("a run's memory count and room leave the cached chunks out") {
  WarmArena warm;
  const std::string_view probe = "return collectgarbage('count')";
  Result<Value> first = run(probe);
  REQUIRE(first.ok());
  const double count = first->get(Value(std::int64_t{1})).as_number();
  // Ten more chunks kept in the snapshot change neither the count a run reads...
  for (int i = 0; i < 10; ++i) CHECK(first_integer(run("local t = {} for i = 1, 50 do t[i] = i end return #t + " + std::to_string(i))) == 50 + i);
  CHECK(guest::warm_state_stats().cached_chunks == 11);
  Result<Value> again = run(probe);
  REQUIRE(again.ok());
  CHECK(again->get(Value(std::int64_t{1})).as_number() == count);
  // ...nor what it may allocate: a quota just above the environment's still runs the probe.
  RunInput input;
  input.source = probe;
  input.chunk_name = "eval";
  input.args = Value::table();
  input.limits = Limits{1'000'000, static_cast<std::uint64_t>(count * 1024) + 4096, 5000};
  Result<Value> tight = guest::run_weak(input, nullptr);
  guest::reset_after_run();
  REQUIRE_MESSAGE(tight.ok(), (tight.ok() ? "" : tight.error().message));
  CHECK(tight->get(Value(std::int64_t{1})).as_number() == count);
}

TEST_CASE("a chunk the source checks refuse is refused on every run, never cached") {
  WarmArena warm;
  const guest::WarmStateStats before = guest::warm_state_stats();
  for (int i = 0; i < 3; ++i) {
    Result<Value> r = run("return 1LL");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::sandbox_refused);
  }
  CHECK(guest::warm_state_stats().cached_chunks == before.cached_chunks);
}
