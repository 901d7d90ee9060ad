// Strong mobility at the guest-runtime level (issue 13): an agent's coroutine stops at agent.go,
// the arena's used pages are imaged, and a fresh process that maps an arena at the same address,
// receives the pages and rebinds what lives outside them (the allocator, agent.here, the count
// hook) resumes it so that agent.go returns there. Each side runs in its own forked child, as
// each hop runs in its own guest: the child that resumes never saw the agent's state.
//
// The children are forks of this test (same executable, same libluajit mapping): the guest gets
// the same guarantee from being one static non-PIE executable (docs/migration.md).
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <lua.hpp>

#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/lua/lua_strong.hpp"
#include "tests/support/error_checks.hpp"

namespace image = sojourn::sandbox::image;
namespace strong = sojourn::sandbox::strong;
using sojourn::Errc;
using sojourn::sandbox::guest::FixedArena;
using sojourn::sandbox::guest::kArenaBase;

namespace {

constexpr std::size_t kArenaBytes = 256u << 20;

void* arena_alloc(void* ud, void* ptr, std::size_t old_size, std::size_t new_size) {
  auto* arena = static_cast<FixedArena*>(ud);
  if (new_size == 0) {
    if (ptr != nullptr) arena->release(ptr, old_size);
    return nullptr;
  }
  if (ptr == nullptr) return arena->allocate(new_size);
  return arena->reallocate(ptr, old_size, new_size);
}

int g_budget = 0;
void budget_hook(lua_State* L, lua_Debug*) { luaL_error(L, "CPU limit of %d instructions exceeded", g_budget); }

// What one hop ended with: the next image (and where it goes), or the entry's result, or an error.
struct Hop {
  char kind = 'E';  // I: image, R: result, E: error
  std::string peer;
  std::vector<std::uint8_t> image;
  std::string text;
};

// Runs `body` in a forked child and returns what it wrote (the child exits right after).
std::string in_child(const std::function<std::string()>& body) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // A crash ends the child as a crash, not through the test framework's handlers.
    for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) ::signal(sig, SIG_DFL);
    ::close(fds[0]);
    std::string out;
    try {
      out = body();
    } catch (...) {
      out = "Eexception in the child";
    }
    for (std::size_t done = 0; done < out.size();) {
      const ssize_t n = ::write(fds[1], out.data() + done, out.size() - done);
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string got;
  char buf[1 << 16];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) return "Ethe child died of signal " + std::to_string(WTERMSIG(status));
  return got;
}

Hop parse(const std::string& out) {
  Hop hop;
  if (out.empty()) return hop;
  hop.kind = out[0];
  if (hop.kind == 'I') {
    const std::size_t nl = out.find('\n');
    hop.peer = out.substr(1, nl - 1);
    hop.image.assign(out.begin() + static_cast<std::ptrdiff_t>(nl + 1), out.end());
  } else {
    hop.text = out.substr(1);
  }
  return hop;
}

std::array<std::uint8_t, 32> this_build() {
  auto id = image::build_id_of("/proc/self/exe");
  REQUIRE(id);
  return *id;
}

// Runs the agent coroutine to its next stop and reports it; a stop is imaged.
std::string drive(lua_State* co, FixedArena& arena, const std::array<std::uint8_t, 32>& build) {
  const strong::Step step = strong::resume_agent(co);
  if (step.stop == strong::Stop::failed) return "E" + step.error;
  if (step.stop == strong::Stop::finished) {
    const char* s = step.results > 0 ? lua_tostring(co, 1) : nullptr;
    return std::string("R") + (s != nullptr ? s : "(not a string)");
  }
  // At the stop no C frame of Lua remains: the arena's used pages are the agent.
  const std::size_t used = (arena.high_water() + image::kPageBytes - 1) & ~(image::kPageBytes - 1);
  image::ImageSource source{build, kArenaBase, arena.size(), reinterpret_cast<std::uintptr_t>(co)};
  auto taken = image::take_image(source, std::span(reinterpret_cast<const std::uint8_t*>(kArenaBase), used));
  if (!taken) return "E" + taken.error().message;
  const std::string peer = step.stop == strong::Stop::went ? step.peer : "(checkpoint)";
  return "I" + peer + "\n" + std::string(taken->begin(), taken->end());
}

// The first hop: a fresh arena and state, the chunk run, then its global `start` as the agent.
Hop first_hop(const std::string& source) {
  return parse(in_child([&] {
    auto arena = FixedArena::map_at(kArenaBase, kArenaBytes);
    if (!arena) return "E" + arena.error().message;
    lua_State* L = lua_newstate(arena_alloc, &*arena);
    if (L == nullptr) return std::string("Eno state");
    luaL_openlibs(L);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);  // strong agents never run traces
    lua_newtable(L);
    lua_pushliteral(L, "A");
    lua_setfield(L, -2, "here");
    lua_setglobal(L, "agent");
    strong::open_strong_api(L);
    // A hook with a large budget on the first hop: the next hop must not inherit it.
    g_budget = 1 << 30;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, g_budget);
    if (luaL_loadbuffer(L, source.data(), source.size(), "=agent") != 0 || lua_pcall(L, 0, 0, 0) != 0) {
      return std::string("E") + lua_tostring(L, -1);
    }
    lua_getglobal(L, "start");
    lua_State* co = strong::start_agent(L);
    return drive(co, *arena, this_build());
  }));
}

struct Resume {
  std::string here = "B";
  int budget = 0;  // 0: no hook
  std::optional<std::array<std::uint8_t, 32>> build;
  std::size_t arena_bytes = kArenaBytes;
  std::size_t max_arena = kArenaBytes;
};

// A later hop: a fresh arena at the same address, the image's pages, the bindings, the resume.
Hop next_hop(const std::vector<std::uint8_t>& bytes, const Resume& how = {}) {
  return parse(in_child([&] {
    const std::array<std::uint8_t, 32> build = how.build.value_or(this_build());
    auto opened = image::open_image(bytes, {build, kArenaBase, how.max_arena});
    if (!opened) return "E" + opened.error().message;
    if (opened->header.arena_bytes != how.arena_bytes) return std::string("Ethe arena's size differs");
    auto fresh = FixedArena::map_at(kArenaBase, how.arena_bytes);
    if (!fresh) return "E" + fresh.error().message;
    std::memcpy(reinterpret_cast<void*>(kArenaBase), opened->used.data(), opened->used.size());
    auto arena = FixedArena::adopt(reinterpret_cast<void*>(kArenaBase), how.arena_bytes);
    if (!arena) return "E" + arena.error().message;
    auto* co = reinterpret_cast<lua_State*>(opened->header.agent_handle);
    // Rebind what lives outside the arena, and every limit, whatever the image holds.
    lua_setallocf(co, arena_alloc, &*arena);
    g_budget = how.budget;
    if (how.budget > 0) {
      lua_sethook(co, budget_hook, LUA_MASKCOUNT, how.budget);
    } else {
      lua_sethook(co, nullptr, 0, 0);
    }
    lua_pushliteral(co, "agent");
    lua_rawget(co, LUA_GLOBALSINDEX);
    lua_pushliteral(co, "here");
    lua_pushlstring(co, how.here.data(), how.here.size());
    lua_rawset(co, -3);
    lua_pop(co, 1);
    return drive(co, *arena, build);
  }));
}

// Moves the agent along its stops until it finishes; returns its result and the peers it named.
std::string tour(const std::string& source, std::vector<std::string>* peers = nullptr, int max_hops = 8) {
  Hop hop = first_hop(source);
  for (int i = 0; hop.kind == 'I' && i < max_hops; ++i) {
    if (peers != nullptr) peers->push_back(hop.peer);
    hop = next_hop(hop.image, Resume{hop.peer.empty() ? "?" : hop.peer});
  }
  if (hop.kind == 'E') return "error: " + hop.text;
  return hop.text;
}

}  // namespace

TEST_CASE("agent.go returns on the destination with the locals of the running function") {
  std::vector<std::string> peers;
  CHECK(tour(R"(
    function start()
      local a, s, t = 41, 'x', {1, 2, 3}
      local before = agent.here
      local ok = agent.go('B')
      a = a + 1
      return table.concat({before, agent.here, tostring(ok), a, s, #t}, ',')
    end)", &peers) == "A,B,true,42,x,3");
  CHECK(peers == std::vector<std::string>{"B"});
}

TEST_CASE("the first hop stops at agent.go and hands out an image, not a result") {
  // The first hop stops at the go and hands out an image; the result only exists after a resume.
  const Hop hop = first_hop("function start() agent.go('B') return 'after' end");
  REQUIRE(hop.kind == 'I');
  CHECK(hop.peer == "B");
  CHECK(!hop.image.empty());
}

TEST_CASE("a go inside 5 nested calls, pcall and xpcall with a handler, goes on in each") {
  CHECK(tour(R"(
    local function f(n, acc)
      if n == 0 then agent.go('B') return acc .. '@' .. agent.here end
      local r = f(n - 1, acc .. n)
      return r .. '<' .. n
    end
    function start()
      local nested = f(5, '')
      local ok, p = pcall(function() local x = 'p' agent.go('C') return x .. agent.here end)
      local hits = 0
      local ok2, q = xpcall(function() agent.go('D') error('boom ' .. agent.here) end,
                            function(m) hits = hits + 1 return 'handled ' .. tostring(m):match('boom %a') end)
      return table.concat({nested, tostring(ok), p, tostring(ok2), q, hits}, '|')
    end)") == "54321@B<1<2<3<4<5|true|pC|false|handled boom D|1");
}

TEST_CASE("a go inside a coroutine the agent resumed is carried up and the chain rebuilt") {
  CHECK(tour(R"(
    function start()
      local inner = coroutine.create(function(a)
        local deep = coroutine.wrap(function()
          agent.go('B')
          coroutine.yield('deep@' .. agent.here)
          agent.go('C')
          return 'deep2@' .. agent.here
        end)
        local x = deep()
        local b = coroutine.yield(a .. '+' .. x)
        return b .. '+' .. deep()
      end)
      local ok1, r1 = coroutine.resume(inner, 'in')
      local ok2, r2 = coroutine.resume(inner, 'again')
      return table.concat({tostring(ok1), r1, tostring(ok2), r2, coroutine.status(inner)}, ',')
    end)") == "true,in+deep@B,true,again+deep2@C,dead");
}

TEST_CASE("suspended generators, shared upvalues, metatables and weak keys survive a move") {
  CHECK(tour(R"(
    function start()
      local gen = coroutine.wrap(function() for i = 1, 10 do coroutine.yield(i) end end)
      local n = 0
      local function inc() n = n + 1 return n end
      local function get() return n end
      local mt = {__index = function(_, k) return k .. '!' end, __add = function(a, b) return a.v + b.v end}
      local o1, o2 = setmetatable({v = 2}, mt), setmetatable({v = 5}, mt)
      local weak = setmetatable({}, {__mode = 'k'})
      local kept = {}
      weak[kept] = 'kept'
      weak[{}] = 'dropped'
      local seen = {gen(), gen()}
      inc()
      agent.go('B')
      inc()
      collectgarbage('collect')
      local count = 0
      for _ in pairs(weak) do count = count + 1 end
      seen[#seen + 1] = gen()
      return table.concat({table.concat(seen, ' '), get(), o1.hello, o1 + o2, count, weak[kept]}, ',')
    end)") == "1 2 3,2,hello!,7,1,kept");
}

TEST_CASE("a pairs loop interrupted by a move keeps its order") {
  CHECK(tour(R"(
    function start()
      local t = {}
      for i = 1, 200 do t['key' .. i] = i end
      local order, moved = {}, false
      for k in pairs(t) do
        order[#order + 1] = k
        if #order == 100 and not moved then moved = true agent.go('B') end
      end
      local again = {}
      for k in pairs(t) do again[#again + 1] = k end
      return (#order == 200 and table.concat(order, ',') == table.concat(again, ',')) and 'same' or 'differs'
    end)") == "same");
}

TEST_CASE("agent.checkpoint images without moving and the agent goes on from the image") {
  std::vector<std::string> peers;
  CHECK(tour("function start() local x = 7 agent.checkpoint() return 'x=' .. x end", &peers) == "x=7");
  CHECK(peers == std::vector<std::string>{"(checkpoint)"});
}

TEST_CASE("a 16 MB and a 64 MB heap travel") {
  for (int mb : {16, 64}) {
    CAPTURE(mb);
    const std::string source = "function start() local parts = {} for i = 1, " + std::to_string(mb) +
                               " * 16 do parts[i] = string.rep(string.char(65 + i % 26), 65536 - 64) .. i end "
                               "agent.go('B') local sum = 0 for i = 1, #parts do sum = sum + #parts[i] end "
                               "return #parts .. ':' .. sum .. ':' .. parts[#parts]:sub(1, 3) end";
    const Hop first = first_hop(source);
    REQUIRE(first.kind == 'I');
    const Hop second = next_hop(first.image);
    REQUIRE(second.kind == 'R');
    const int n = mb * 16;
    std::uint64_t sum = 0;
    for (int i = 1; i <= n; ++i) sum += 65536 - 64 + std::to_string(i).size();
    const std::string last(3, static_cast<char>(65 + n % 26));
    CHECK(second.text == std::to_string(n) + ":" + std::to_string(sum) + ":" + last);
  }
}

TEST_CASE("the resuming side refuses what it must not load, and the limits are its own") {
  const Hop first = first_hop("function start() agent.go('B') while true do end end");
  REQUIRE(first.kind == 'I');
  SUBCASE("another guest build") {
    std::array<std::uint8_t, 32> other{};
    other.fill(0x11);
    const Hop hop = next_hop(first.image, Resume{"B", 0, other});
    const std::array<std::uint8_t, 32> mine = this_build();
    CHECK(hop.kind == 'E');
    CHECK(hop.text.find("image from guest build " + image::hex(std::span(mine).first(8)) +
                        ", this node runs 1111111111111111") != std::string::npos);
  }
  SUBCASE("a tampered image") {
    std::vector<std::uint8_t> bytes = first.image;
    bytes[bytes.size() / 2] ^= 0x20;
    const Hop hop = next_hop(bytes);
    CHECK(hop.kind == 'E');
    CHECK(hop.text.find("hash mismatch") != std::string::npos);
  }
  SUBCASE("an arena over the memory quota") {
    Resume small;
    small.max_arena = kArenaBytes / 4;
    const Hop hop = next_hop(first.image, small);
    CHECK(hop.kind == 'E');
    CHECK(hop.text.find("above the memory quota") != std::string::npos);
  }
  SUBCASE("out of budget after the resume: the destination's hook, not the image's") {
    Resume tight;
    tight.budget = 100000;
    const Hop hop = next_hop(first.image, tight);
    CHECK(hop.kind == 'E');
    CHECK(hop.text.find("CPU limit of 100000 instructions exceeded") != std::string::npos);
  }
}

TEST_CASE("a corrupt but well-hashed image only kills the process that loads it") {
  const Hop first = first_hop("function start() local t = {1, 2, 3} agent.go('B') return 'ok ' .. #t end");
  REQUIRE(first.kind == 'I');
  // Open it, scribble over the Lua heap's objects (past the arena bookkeeping), seal it again.
  auto opened = image::open_image(first.image, {this_build(), kArenaBase, kArenaBytes});
  REQUIRE(opened);
  std::vector<std::uint8_t> used = opened->used;
  for (std::size_t i = 4096; i < used.size(); i += 8) used[i] ^= 0xa5;
  auto resealed = image::take_image({this_build(), kArenaBase, kArenaBytes, opened->header.agent_handle}, used);
  REQUIRE(resealed);
  const Hop bad = next_hop(*resealed);
  CHECK(bad.kind == 'E');  // a crash, a refusal or a Lua error: never a result
  // The next resume, in a new process as in a new jail, works.
  const Hop good = next_hop(first.image);
  CHECK(good.kind == 'R');
  CHECK(good.text == "ok 3");
}

TEST_CASE("LuaJIT facts strong mobility relies on: the state is in the arena, its allocator handle is not") {
  const std::string out = in_child([] {
    auto arena = FixedArena::map_at(kArenaBase, kArenaBytes);
    if (!arena) return "E" + arena.error().message;
    lua_State* L = lua_newstate(arena_alloc, &*arena);
    if (L == nullptr) return std::string("Eno state");
    luaL_openlibs(L);
    lua_State* co = lua_newthread(L);
    void* ud = nullptr;
    lua_getallocf(L, &ud);
    lua_getglobal(L, "print");
    const void* print = lua_topointer(L, -1);
    std::string facts;
    // The main thread is the head of GG_State (global_State and the dispatch table with it).
    facts += arena->contains(L) ? "main-in " : "main-out ";
    facts += arena->contains(co) ? "thread-in " : "thread-out ";
    facts += arena->contains(print) ? "cfunc-in " : "cfunc-out ";
    facts += arena->contains(ud) ? "allocd-in" : "allocd-out";
    return "R" + facts;
  });
  CHECK(out == "Rmain-in thread-in cfunc-in allocd-out");
}

// ---- The same moves under the sandbox's environment and limits (strong::run_agent_strong and
// strong::resume_agent_strong over an installed arena, as in the guest).

namespace {

constexpr std::size_t kQuota = 96u << 20;

sojourn::Value facts_at(const std::string& here) {
  sojourn::Value info = sojourn::Value::table();
  info.set(sojourn::Value("here"), sojourn::Value(here));
  return info;
}

// A step's outcome as a hop: the image at a strong stop, else the result or the error.
std::string as_hop(const sojourn::Result<sojourn::sandbox::AgentOutcome>& outcome, const std::string& image_bytes) {
  if (!outcome) return "E" + std::string(sojourn::errc_name(outcome.error().code)) + " " + outcome.error().message;
  if (outcome->strong_stop) return "I" + (outcome->checkpoint ? std::string("(checkpoint)") : outcome->go_peer) + "\n" + image_bytes;
  if (outcome->went) return "Rweak go to " + outcome->go_peer + " at " + outcome->go_entry;
  const sojourn::Value first = outcome->results.get(sojourn::Value(std::int64_t{1}));
  return "R" + (first.is_string() ? first.as_string() : std::string("(not a string)"));
}

sojourn::sandbox::strong::StopSink image_into(std::string& out, FixedArena& arena) {
  return [&out, &arena](std::uintptr_t handle) -> sojourn::Result<void> {
    const std::size_t used = (arena.high_water() + image::kPageBytes - 1) & ~(image::kPageBytes - 1);
    auto taken = image::take_image({this_build(), kArenaBase, arena.size(), handle},
                                   std::span(reinterpret_cast<const std::uint8_t*>(kArenaBase), used));
    if (!taken) return taken.error();
    out.assign(taken->begin(), taken->end());
    return {};
  };
}

sojourn::sandbox::RunInput input_of(const std::string& source, std::uint64_t cpu = 50'000'000) {
  sojourn::sandbox::RunInput input;
  input.source = source;
  input.chunk_name = "agent";
  input.args = sojourn::Value::table();
  input.limits = sojourn::Limits{cpu, kQuota, 10'000};
  return input;
}

Hop sandbox_first(const std::string& source) {
  return parse(in_child([&] {
    auto arena = FixedArena::map_at(kArenaBase, kArenaBytes);
    if (!arena) return "E" + arena.error().message;
    sojourn::sandbox::use_lua_heap(&*arena);
    const sojourn::sandbox::RunInput input = input_of(source);
    const sojourn::sandbox::AgentInput agent{"start", sojourn::Value::table(), facts_at("A")};
    std::string bytes;
    auto outcome = strong::run_agent_strong(input, agent, nullptr, image_into(bytes, *arena));
    return as_hop(outcome, bytes);
  }));
}

Hop sandbox_next(const std::vector<std::uint8_t>& bytes, const std::string& here, std::uint64_t cpu = 50'000'000) {
  return parse(in_child([&] {
    auto opened = image::open_image(bytes, {this_build(), kArenaBase, kArenaBytes});
    if (!opened) return "E" + opened.error().message;
    auto fresh = FixedArena::map_at(kArenaBase, opened->header.arena_bytes);
    if (!fresh) return "E" + fresh.error().message;
    std::memcpy(reinterpret_cast<void*>(kArenaBase), opened->used.data(), opened->used.size());
    auto arena = FixedArena::adopt(reinterpret_cast<void*>(kArenaBase), opened->header.arena_bytes);
    if (!arena) return "E" + arena.error().message;
    sojourn::sandbox::use_lua_heap(&*arena);
    std::string next;
    auto outcome = strong::resume_agent_strong(opened->header.agent_handle, input_of("", cpu), facts_at(here), nullptr,
                                               image_into(next, *arena));
    return as_hop(outcome, next);
  }));
}

}  // namespace

TEST_CASE("sandboxed strong steps: the restricted environment's pcall and coroutines carry a go") {
  const Hop first = sandbox_first(R"(
    function start(state)
      local seen = {}
      local gen = coroutine.wrap(function() for i = 1, 10 do coroutine.yield(i) end end)
      for _, stop in ipairs({'B', 'C'}) do
        local n = gen()
        local ok = pcall(function() agent.go(stop) end)
        seen[#seen + 1] = agent.here .. n .. tostring(ok)
      end
      local inner = coroutine.create(function() agent.go('D') return agent.here end)
      local _, where = coroutine.resume(inner)
      return table.concat(seen, ' ') .. ' ' .. where
    end)");
  REQUIRE(first.kind == 'I');
  CHECK(first.peer == "B");
  const Hop second = sandbox_next(first.image, "B");
  REQUIRE(second.kind == 'I');
  CHECK(second.peer == "C");
  const Hop third = sandbox_next(second.image, "C");
  REQUIRE(third.kind == 'I');
  CHECK(third.peer == "D");
  const Hop last = sandbox_next(third.image, "D");
  CHECK(last.kind == 'R');
  CHECK(last.text == "B1true C2true D");
}

TEST_CASE("sandboxed strong steps: a weak go keeps its semantics, and limits after a resume are the destination's") {
  const Hop weak = sandbox_first("function start() agent.go('B', 'later') end");
  CHECK(weak.kind == 'R');
  CHECK(weak.text == "weak go to B at later");

  const Hop first = sandbox_first("function start() agent.go('B') while true do end end");
  REQUIRE(first.kind == 'I');
  const Hop spun = sandbox_next(first.image, "B", 200'000);
  CHECK(spun.kind == 'E');
  CHECK(spun.text == "cpu_limit CPU limit of 200000 instructions exceeded");

  const Hop grow = sandbox_first("function start() agent.go('B') local t = {} while true do t[#t + 1] = ('x'):rep(4096) .. #t end end");
  REQUIRE(grow.kind == 'I');
  const Hop bomb = sandbox_next(grow.image, "B");
  CHECK(bomb.kind == 'E');
  CHECK(bomb.text.find("memory_limit memory limit of " + std::to_string(kQuota) + " bytes exceeded") == 0);
}

namespace {

// A span of `pages` pages, each page in `filled` holding bytes that tell it apart; a page in
// `partial` only its first 100 bytes (the rest zero, as the arena's top page usually is).
std::vector<std::uint8_t> span_with(std::size_t pages, std::initializer_list<std::size_t> filled,
                                    std::initializer_list<std::size_t> partial = {}) {
  std::vector<std::uint8_t> span(pages * image::kPageBytes, 0);
  for (std::size_t p : filled) {
    for (std::size_t i = 0; i < image::kPageBytes; ++i) span[p * image::kPageBytes + i] = static_cast<std::uint8_t>(p * 31 + i % 251 + 1);
  }
  for (std::size_t p : partial) {
    for (std::size_t i = 0; i < 100; ++i) span[p * image::kPageBytes + i] = static_cast<std::uint8_t>(i + 7);
  }
  return span;
}

// What a guest hands over for a span: the page map and the kept pages in order.
struct Kept {
  std::vector<std::uint8_t> map, pages;
  image::KeptPages view(std::size_t used) const { return {used, map, pages}; }
};
Kept kept_of(const std::vector<std::uint8_t>& span) {
  Kept k;
  const std::size_t pages = span.size() / image::kPageBytes;
  k.map.assign(image::page_map_bytes(span.size()), 0);
  for (std::size_t p = 0; p < pages; ++p) {
    const auto* at = span.data() + p * image::kPageBytes;
    if (std::any_of(at, at + image::kPageBytes, [](std::uint8_t b) { return b != 0; })) {
      k.map[p / 8] = static_cast<std::uint8_t>(k.map[p / 8] | (1u << (p % 8)));
      k.pages.insert(k.pages.end(), at, at + image::kPageBytes);
    }
  }
  return k;
}

constexpr std::size_t kSmallArena = 64 * image::kPageBytes;

}  // namespace

TEST_CASE("kept pages: a heap with holes and a partial last page seals and opens to the same span") {
  const std::vector<std::uint8_t> span = span_with(11, {0, 3, 4, 7}, {10});
  const Kept kept = kept_of(span);
  REQUIRE(kept.pages.size() == 5 * image::kPageBytes);
  const image::ImageSource source{this_build(), kArenaBase, kSmallArena, kArenaBase + 64};
  image::ImageStats stats;
  auto from_pages = image::take_image(source, kept.view(span.size()), &stats);
  REQUIRE(from_pages);
  CHECK(stats.kept_pages == 5);
  CHECK(stats.raw_bytes == span.size());
  CHECK(stats.payload_bytes == kept.map.size() + kept.pages.size());
  // The same image as sealing the whole span: the payload is the same bytes either way.
  auto from_span = image::take_image(source, span);
  REQUIRE(from_span);
  CHECK(*from_pages == *from_span);

  auto opened = image::open_image(*from_pages, {this_build(), kArenaBase, kSmallArena});
  REQUIRE(opened);
  CHECK(opened->used == span);
  CHECK(opened->header.used_bytes == span.size());

  // Straight into a destination: exactly the kept pages, in the map's order.
  std::vector<std::uint8_t> into, map_seen;
  auto placed = image::open_image_into(*from_pages, {this_build(), kArenaBase, kSmallArena},
                                       [&](const image::ImageHeader&, std::span<const std::uint8_t> map) {
                                         map_seen.assign(map.begin(), map.end());
                                         into.resize(image::kept_pages(map) * image::kPageBytes);
                                         return std::span<std::uint8_t>(into);
                                       });
  REQUIRE(placed);
  CHECK(map_seen == kept.map);
  CHECK(into == kept.pages);
}

TEST_CASE("kept pages: a page map that disagrees with its span or its pages is not sealed") {
  const std::vector<std::uint8_t> span = span_with(9, {1, 8});
  const image::ImageSource source{this_build(), kArenaBase, kSmallArena, kArenaBase};
  Kept kept = kept_of(span);
  // A page past the span (bit 9 of a 9-page span).
  Kept past = kept;
  past.map[1] = static_cast<std::uint8_t>(past.map[1] | 0x02);
  past.pages.resize(past.pages.size() + image::kPageBytes, 1);
  CHECK_ERROR(image::take_image(source, past.view(span.size())), Errc::invalid_argument, "page map of 2 bytes keeps 3 of 9 pages");
  // More page bytes than the map keeps.
  Kept extra = kept;
  extra.pages.resize(extra.pages.size() + image::kPageBytes, 1);
  CHECK_ERROR(image::take_image(source, extra.view(span.size())), Errc::invalid_argument, "with 12288 bytes of pages");
  // A map of the wrong size.
  Kept short_map = kept;
  short_map.map.pop_back();
  CHECK_ERROR(image::take_image(source, short_map.view(span.size())), Errc::invalid_argument, "page map of 1 bytes");
  // A span past the arena, or not whole pages.
  CHECK_ERROR(image::take_image(source, kept.view(kSmallArena + image::kPageBytes * 8)), Errc::invalid_argument,
              "whole pages of the arena");
  CHECK_ERROR(image::take_image(source, kept.view(span.size() - 1)), Errc::invalid_argument, "whole pages of the arena");
}

TEST_CASE("kept pages: an image whose page map marks pages outside its span, or whose hash fails, is refused unopened") {
  // Sealed over 16 pages with page 12 kept, then told it covers 10: the map's byte count is the
  // same (2), its payload agrees, and the hash is made good again, so only the map tells.
  const std::vector<std::uint8_t> span = span_with(16, {0, 12});
  auto taken = image::take_image({this_build(), kArenaBase, kSmallArena, kArenaBase}, span);
  REQUIRE(taken);
  std::vector<std::uint8_t> outside = *taken;
  const std::uint64_t ten_pages = 10 * image::kPageBytes;
  for (int i = 0; i < 8; ++i) outside[64 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(ten_pages >> (8 * i));
  image::reseal(outside);
  bool placed = false;
  const auto place = [&](const image::ImageHeader&, std::span<const std::uint8_t>) {
    placed = true;
    return std::span<std::uint8_t>{};
  };
  CHECK_ERROR(image::open_image_into(outside, {this_build(), kArenaBase, kSmallArena}, place), Errc::sandbox_refused,
              "refused by the sandbox: heap image: the page map marks pages past the used span");
  CHECK_FALSE(placed);
  // Past the arena: a span larger than the arena it declares.
  std::vector<std::uint8_t> beyond = *taken;
  const std::uint64_t too_many = kSmallArena + 16 * image::kPageBytes;
  for (int i = 0; i < 8; ++i) beyond[64 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(too_many >> (8 * i));
  image::reseal(beyond);
  CHECK_ERROR(image::open_image_into(beyond, {this_build(), kArenaBase, kSmallArena}, place), Errc::sandbox_refused,
              "declares a used span of " + std::to_string(too_many) + " bytes in an arena of " + std::to_string(kSmallArena));
  CHECK_FALSE(placed);
  // One compressed byte changed and not resealed: the hash refuses it before any page is placed.
  std::vector<std::uint8_t> tampered = *taken;
  tampered[tampered.size() - 3] ^= 0x40;
  CHECK_ERROR(image::open_image_into(tampered, {this_build(), kArenaBase, kSmallArena}, place), Errc::sandbox_refused,
              "heap image hash mismatch");
  CHECK_FALSE(placed);
}
