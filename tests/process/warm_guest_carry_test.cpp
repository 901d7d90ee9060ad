// Tests of the reads a warm guest carries: a read-only call's answer read ahead at the run's
// start, used by the chunk without crossing the channel; a write before a read, a policy
// refusal and a guest lying about what it used.
#include <doctest/doctest.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tests/process/warm_guest_support.hpp"

using namespace warm_test;

namespace {

// A host with an in-memory kv.get / kv.put whose kv.get answers may be carried (unless
// forbidden, as a policy that does not grant it would say), counting what crosses and what
// the guest says it used.
class CarryHost final : public sojourn::sandbox::HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    ++crossed[std::string(service)];
    if (service == "kv.get") {
      if (forbidden) return sojourn::make_error(Errc::service_not_granted, "service kv.get is not granted");
      return answer(args);
    }
    if (service == "kv.put") {
      store[args.get(1).as_string()] = args.get(2).as_integer();
      return Value{};
    }
    return sojourn::make_error(Errc::no_such_service, "no such service");
  }
  bool carries(std::string_view service) const override { return service == "kv.get" && !forbidden; }
  std::optional<Value> read_ahead(std::string_view service, const Value& args) override {
    if (!carries(service)) return std::nullopt;
    ++read_ahead_calls;
    return answer(args);
  }
  Value answer(const Value& args) {
    const std::string key = args.get(1).as_string();
    if (auto it = text.find(key); it != text.end()) return Value(it->second);
    return Value(store[key]);
  }
  void carried_used(std::string_view service, const Value& args) override {
    used.push_back(std::string(service) + " " + args.get(1).as_string());
  }

  std::map<std::string, std::int64_t> store;
  std::map<std::string, std::string> text;  // keys answered with a string instead
  std::map<std::string, int> crossed;
  std::vector<std::string> used;
  int read_ahead_calls = 0;
  bool forbidden = false;
};

Result<Value> run_with(ProcessJail& jail, sojourn::sandbox::HostCalls& host, std::string_view source) {
  RunInput input;
  input.source = source;
  input.limits = limits();
  input.principal = "signer a";
  return jail.run(input, &host);
}

}  // namespace

TEST_CASE("a warm guest's later runs get a read-only call's answer at their start without crossing, counted as used") {
  auto jail = start(1);
  CarryHost host;
  host.store["k"] = 1;
  const std::string chunk = "local v = node.call('kv.get', 'k') return v + 1";
  CHECK(first_integer(run_with(*jail, host, chunk)) == 2);
  CHECK(host.crossed["kv.get"] == 1);  // nothing learned yet: it crossed
  CHECK(host.used.empty());
  for (std::int64_t value = 10; value < 13; ++value) {
    host.store["k"] = value;  // the answer carried is the store's at the run's start
    CHECK(first_integer(run_with(*jail, host, chunk)) == value + 1);
  }
  CHECK(jail->status().guests_reused == 3);
  CHECK(host.crossed["kv.get"] == 1);  // the three later runs were answered from their request
  CHECK(host.read_ahead_calls == 3);
  CHECK(host.used == std::vector<std::string>{"kv.get k", "kv.get k", "kv.get k"});
  // Another key than the one carried crosses, and gets the store's value.
  host.store["j"] = 7;
  CHECK(first_integer(run_with(*jail, host, "local a = node.call('kv.get', 'k') local b = node.call('kv.get', 'j') return a + b")) == 19);
  CHECK(host.crossed["kv.get"] == 3);
}

TEST_CASE("a chunk that writes then reads sees its write, not the value carried from its start") {
  auto jail = start(1);
  CarryHost host;
  const std::string chunk = "local before = node.call('kv.get', 'k') node.call('kv.put', 'k', before + 10) "
                            "return node.call('kv.get', 'k'), before";
  host.store["k"] = 1;
  Result<Value> first = run_with(*jail, host, chunk);
  REQUIRE(first.ok());
  CHECK(first->get(1).as_integer() == 11);
  host.store["k"] = 5;
  Result<Value> second = run_with(*jail, host, chunk);
  REQUIRE(second.ok());
  CHECK(second->get(2).as_integer() == 5);   // the first read: carried
  CHECK(second->get(1).as_integer() == 15);  // after the write: asked of the host, its new value
  CHECK(host.used == std::vector<std::string>{"kv.get k"});
  CHECK(host.crossed["kv.get"] == 3);  // the first run's two, the second's read after its write
}

TEST_CASE("a read the host does not carry (a policy refusal) is asked for at each call and gets its refusal") {
  auto jail = start(1);
  CarryHost host;
  const std::string chunk = "local v = node.call('kv.get', 'k') return v";
  CHECK(first_integer(run_with(*jail, host, chunk)) == 0);  // learned
  host.forbidden = true;
  for (int i = 0; i < 2; ++i) {
    Result<Value> r = run_with(*jail, host, chunk);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("not granted") != std::string::npos);
  }
  CHECK(host.read_ahead_calls == 0);
  CHECK(host.used.empty());
  CHECK(host.crossed["kv.get"] == 3);
}

TEST_CASE("a guest that lies about the carried reads it used is killed and counted nothing; the jail serves on") {
  auto jail = start(1, /*test_guest=*/true);
  CarryHost host;
  host.store["k"] = 4;
  const std::string chunk = "--@lie-used\nreturn node.call('kv.get', 'k')";
  CHECK(first_integer(run_with(*jail, host, chunk)) == 4);  // nothing carried yet: no lie
  Result<Value> lied = run_with(*jail, host, chunk);
  REQUIRE_FALSE(lied.ok());
  CHECK(lied.error().code == Errc::guest_crashed);
  CHECK(host.used.empty());
  CHECK(first_integer(run_with(*jail, host, "return node.call('kv.get', 'k')")) == 4);
}

TEST_CASE("a read whose answer is over the carried bound crosses at each call; the small read beside it is carried") {
  auto jail = start(1);
  CarryHost host;
  host.store["k"] = 1;
  host.text["big"] = std::string(5000, 'x');  // over the 4 KiB a carried value may take
  const std::string chunk = "local a = node.call('kv.get', 'k') local b = node.call('kv.get', 'big') return a + #b";
  CHECK(first_integer(run_with(*jail, host, chunk)) == 5001);
  CHECK(host.crossed["kv.get"] == 2);  // nothing learned yet
  for (std::int64_t value = 2; value < 4; ++value) {
    host.store["k"] = value;
    CHECK(first_integer(run_with(*jail, host, chunk)) == value + 5000);
  }
  CHECK(host.crossed["kv.get"] == 4);  // the large one, once a run
  CHECK(host.used == std::vector<std::string>{"kv.get k", "kv.get k"});
  // The large read stays learned (it crossed): once its answer is small, it is carried too.
  host.text["big"] = "yy";
  CHECK(first_integer(run_with(*jail, host, chunk)) == 5);
  CHECK(first_integer(run_with(*jail, host, chunk)) == 5);
  CHECK(host.crossed["kv.get"] == 4);
  CHECK(host.used.size() == 6);
}
