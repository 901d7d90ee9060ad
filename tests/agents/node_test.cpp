// Two real nodes over TCP on loopback (and in-process): client-server, remote
// evaluation with node.call, concurrency on one connection, hostile chunks, shutdown.
#include <algorithm>
#include <doctest/doctest.h>

#include "sojourn/agents/node_async.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <thread>

#include "sojourn/agents/node.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

struct TwoNodes {
  Node server{NodeOptions{.name = "server"}};
  Node client{NodeOptions{.name = "client"}};
  std::string address;
  TwoNodes() {
    auto bound = server.listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    address = *bound;
  }
};

}  // namespace

TEST_CASE("client-server: kv.put then kv.get over TCP returns the stored table") {
  TwoNodes n;
  Value v = Value::table();
  v.set("x", 1);
  auto put = n.client.call(n.address, "kv.put", Value::array({"k", v}));
  REQUIRE(put.ok());
  auto got = n.client.call(n.address, "kv.get", Value::array({"k"}));
  REQUIRE(got.ok());
  CHECK(got->get("x").as_integer() == 1);
  CHECK(n.client.call(n.address, "kv.keys")->get(1).as_string() == "k");
  CHECK(n.client.call(n.address, "kv.del", Value::array({"k"}))->as_bool());
  CHECK(n.client.call(n.address, "kv.get", Value::array({"k"}))->is_nil());
}

TEST_CASE("the kv store refuses a put past its byte limit and keeps what it had") {
  NodeOptions o;
  o.name = "small";
  o.kv_max_bytes = 1000;
  Node node(o);
  std::string half(400, 'x');
  REQUIRE(node.call_local("kv.put", Value::array({"a", half})).ok());
  REQUIRE(node.call_local("kv.put", Value::array({"b", half})).ok());
  auto full = node.call_local("kv.put", Value::array({"c", half}));
  REQUIRE_FALSE(full.ok());
  CHECK_ERROR(full, Errc::service_failed, "kv.put", "1000 bytes");
  CHECK(node.call_local("kv.get", Value::array({"a"}))->as_string() == half);
  // Replacing or deleting gives the room back.
  REQUIRE(node.call_local("kv.put", Value::array({"a", "small"})).ok());
  REQUIRE(node.call_local("kv.put", Value::array({"c", half})).ok());
  CHECK(node.call_local("kv.del", Value::array({"b"}))->as_bool());
  CHECK(node.call_local("kv.put", Value::array({"d", half})).ok());
}

TEST_CASE("a stored table does not change when the caller changes its own copy afterwards") {
  Node node(NodeOptions{.name = "n"});
  Value args = Value::table();
  Value v = args.new_table();  // same graph as the arguments: no copy on the way in
  v.set("x", 1);
  args.set(1, "k");
  args.set(2, v);
  REQUIRE(node.call_local("kv.put", args).ok());
  v.set("x", 2);
  CHECK(node.call_local("kv.get", Value::array({"k"}))->get("x").as_integer() == 1);
}

TEST_CASE("a remote service error carries the remote message and code") {
  TwoNodes n;
  n.server.register_service("fail", [](const Value&) -> Result<Value> {
    return make_error(Errc::service_failed, "service fail failed: disk on fire");
  });
  n.server.register_service("throws", [](const Value&) -> Result<Value> { throw std::runtime_error("boom"); });
  auto r = n.client.call(n.address, "fail");
  REQUIRE_FALSE(r.ok());
  CHECK_ERROR(r, Errc::service_failed, "service fail ", "disk on fire");
  CHECK_ERROR(n.client.call(n.address, "throws"), Errc::service_failed, "service throws ", "boom");
  auto missing = n.client.call(n.address, "no.such");
  CHECK_ERROR(missing, Errc::no_such_service, "no.such");
  CHECK_ERROR(n.client.call(n.address, "kv.get", Value::array({1})), Errc::invalid_argument, "kv.get", "argument 1",
              "got integer");
}

TEST_CASE("remote evaluation runs at the server and reaches its services through node.call") {
  TwoNodes n;
  Value v = Value::table();
  v.set("x", 41);
  REQUIRE(n.client.call(n.address, "kv.put", Value::array({"k", v})).ok());
  auto r = n.client.eval(n.address, "local v = node.call('kv.get', 'k'); return v.x + 1, node.call('node.info').name");
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_integer() == 42);
  CHECK(r->results.get(2).as_string() == "server");
  auto with_args = n.client.eval(n.address, "local a, b = ...; return a .. b", Value::array({"re", "v"}));
  CHECK(with_args->results.get(1).as_string() == "rev");
}

TEST_CASE("a hundred concurrent calls share one connection and all get their own answer") {
  TwoNodes n;
  n.server.register_service("slow.echo", [](const Value& args) -> Result<Value> {
    std::this_thread::sleep_for(std::chrono::milliseconds(args.get(2).as_integer()));
    return args.get(1);
  });
  std::vector<std::future<Result<Value>>> futures;
  for (int i = 0; i < 100; ++i) {
    futures.push_back(asio::co_spawn(node_executor(n.client),
                                     async_call(n.client, n.address, "slow.echo", Value::array({i, (100 - i) % 7})),
                                     asio::use_future));
  }
  for (int i = 0; i < 100; ++i) {
    auto r = futures[static_cast<std::size_t>(i)].get();
    REQUIRE(r.ok());
    CHECK(r->as_integer() == i);
  }
  CHECK(n.server.stats().calls_served == 100);
}

TEST_CASE("hostile chunks end with their specific error and the node serves the next request") {
  TwoNodes n;
  EvalOptions small;
  small.limits = Limits{2'000'000, 8u << 20, 5'000};
  struct Case {
    std::string source;
    Errc code;
    std::string message_start;
  };
  std::vector<Case> cases = {
      {"while true do end", Errc::cpu_limit, "CPU limit of 2000000 instructions exceeded"},
      {"local t = {} while true do t[#t+1] = ('x'):rep(1024) .. #t end", Errc::memory_limit, "memory limit of 8388608 bytes exceeded"},
      {"local function f(n) return 1 + f(n + 1) end return f(1)", Errc::lua_error, "Lua error"},
      {"return load(string.char(27) .. 'LJ')", Errc::lua_error, "Lua error at eval:1:"},
      {"return os.exit(1)", Errc::lua_error, "Lua error at eval:1:"},
      {"return io.open('/etc/passwd')", Errc::lua_error, "Lua error at eval:1:"},
      {"return debug.getinfo(1)", Errc::lua_error, "Lua error at eval:1:"},
      {"return require('ffi')", Errc::lua_error, "Lua error at eval:1:"},
      {"return string.gmatch('a', 'a')", Errc::not_transferable, "value at "},
      {std::string(1, '\x1b') + "LJ\x02", Errc::sandbox_refused, "refused by the sandbox: "},
  };
  for (const Case& c : cases) {
    CAPTURE(c.source);
    auto r = n.client.eval(n.address, c.source, Value::table(), small);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == c.code);
    CHECK(r.error().message.rfind(c.message_start, 0) == 0);
    auto next = n.client.eval(n.address, "return 1 + 1");
    REQUIRE(next.ok());
    CHECK(next->results.get(1).as_integer() == 2);
  }
}

TEST_CASE("an isolation level the node does not offer is refused, not silently downgraded") {
  TwoNodes n;
  const IsolationLevels levels = n.server.isolation_levels();
  const std::string why = levels.why_missing();
  const bool has_microvm = levels.has(Isolation::microvm);
  EvalOptions o;
  o.isolation = Isolation::microvm;
  auto r = n.client.eval(n.address, "return 1", Value::table(), o);
  if (has_microvm) {
    // A host whose KVM runs the guest (the nested QEMU guest runs this in microvm_node_test).
    REQUIRE(r.ok());
    CHECK(r->isolation == Isolation::microvm);
  } else {
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::sandbox_refused);
    MESSAGE("microvm here: " << why);
    CHECK(r.error().message.rfind("refused by the sandbox: isolation level 'microvm' is not available on this node: ", 0) == 0);
    // The reason is the jail's own (no /dev/kvm, kvm_pvm, no guest binary...), never empty.
    CHECK(why.find("microvm: ") != std::string::npos);
  }
}

TEST_CASE("isolation_levels names every level once, available or missing with its reason") {
  Node node{NodeOptions{.name = "levels"}};
  const IsolationLevels levels = node.isolation_levels();
  CHECK(levels.has(Isolation::trusted));  // the node's own Lua needs no jail to start
  CHECK(levels.available.size() + levels.missing.size() == 3);
  for (Isolation level : {Isolation::trusted, Isolation::process, Isolation::microvm}) {
    CAPTURE(isolation_name(level));
    const auto missing = std::count_if(levels.missing.begin(), levels.missing.end(),
                                       [&](const auto& m) { return m.first == level; });
    CHECK(static_cast<int>(levels.has(level)) + missing == 1);
  }
  std::string text;
  for (const auto& [level, why] : levels.missing) {
    CHECK_FALSE(why.empty());
    text += (text.empty() ? "" : "; ") + std::string(isolation_name(level)) + ": " + why;
  }
  CHECK(levels.why_missing() == text);
  CHECK(std::is_sorted(levels.available.begin(), levels.available.end()));
}

TEST_CASE("code from a peer runs in the strongest jail by default, and never below what it asks for") {
  TwoNodes n;
  auto r = n.client.eval(n.address, "return node.call('node.info').name, 6 * 7");
  REQUIRE(r.ok());
  const auto levels = n.server.isolation_levels();
  const Isolation strongest = levels.available.back();
  CHECK(strongest != Isolation::trusted);
  CHECK(r->isolation == strongest);
  CHECK(n.server.peer_isolation() == strongest);
  CHECK(r->results.get(1).as_string() == "server");
  CHECK(r->results.get(2).as_integer() == 42);

  Node trusting{NodeOptions{.name = "trusting", .peer_isolation = Isolation::trusted}};
  auto at = trusting.listen("127.0.0.1:0");
  REQUIRE(at.ok());
  auto fast = n.client.eval(*at, "return 1");
  REQUIRE(fast.ok());
  CHECK(fast->isolation == Isolation::trusted);
  EvalOptions o;
  o.isolation = Isolation::process;
  auto jailed = n.client.eval(*at, "return 1", Value::table(), o);
  REQUIRE(jailed.ok());
  CHECK(jailed->isolation == Isolation::process);
}

TEST_CASE("nodes in one process talk over the in-process transport") {
  Node a{NodeOptions{.name = "a"}};
  Node b{NodeOptions{.name = "b"}};
  REQUIRE(a.listen("inproc://node-test-a").ok());
  REQUIRE(b.call("inproc://node-test-a", "kv.put", Value::array({"k", "v"})).ok());
  auto r = b.eval("inproc://node-test-a", "return node.call('kv.get', 'k')");
  REQUIRE(r.ok());
  CHECK(r->results.get(1).as_string() == "v");
}

TEST_CASE("an unreachable peer is a connection error, not a hang") {
  Node client{NodeOptions{.name = "client"}};
  auto r = client.call("127.0.0.1:1", "kv.get", Value::array({"k"}));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::connect_failed);
}

TEST_CASE("shutdown ends a running evaluation with a clear error and refuses new requests") {
  TwoNodes n;
  // The chunk tells the test it is running (an event, not a guess at how long starting takes).
  std::promise<void> running;
  n.server.register_service("test.running", [&running](const Value&) -> Result<Value> {
    running.set_value();
    return Value(true);
  });
  auto pending = std::async(std::launch::async, [&] {
    EvalOptions o;
    o.limits.wall_ms = 60'000;
    o.limits.cpu_instructions = 1'000'000'000'000;
    return n.client.eval(n.address, "node.call('test.running') while true do end", Value::table(), o);
  });
  REQUIRE(running.get_future().wait_for(30s) == std::future_status::ready);
  n.server.shutdown(50ms);
  auto r = pending.get();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::shutting_down);
  CHECK(r.error() == errors::shutting_down());
  auto after = n.client.call(n.address, "kv.keys");
  REQUIRE_FALSE(after.ok());
  CHECK_MESSAGE((after.error().code == Errc::connect_failed || after.error().code == Errc::connection_closed),
                after.error().message);
}

TEST_CASE("the coroutine API evaluates with default options from inside a coroutine") {
  TwoNodes n;
  auto task = [&]() -> asio::awaitable<std::int64_t> {
    auto r = co_await async_eval(n.client, n.address, "return 20 + 22", Value::table());
    co_return r ? r->results.get(1).as_integer() : -1;
  };
  CHECK(asio::co_spawn(node_executor(n.client), task(), asio::use_future).get() == 42);
}
