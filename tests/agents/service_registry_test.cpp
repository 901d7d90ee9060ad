// The service registry's memo of a lookup (agents/services.hpp): the network thread's inline
// paths find the same service again without the lock, and never an entry an add() replaced.
#include <doctest/doctest.h>

#include "agents/services.hpp"  // first: <utility> before any Asio header

#include <memory>
#include <string>

using namespace sojourn;

namespace {

ServiceEntry answering(std::int64_t n) {
  ServiceEntry e;
  e.fn = [n](const Value&, const PeerIdentity&) -> Result<Value> { return Value(n); };
  return e;
}

std::int64_t answer_of(const ServiceEntry* e) {
  REQUIRE(e != nullptr);
  auto r = ServiceRegistry::invoke("x", e->fn, Value::table(), PeerIdentity{"local"});
  REQUIRE(r.ok());
  return r->as_integer();
}

}  // namespace

TEST_CASE("a lookup memo gives the registered entry, the same one while nothing is added") {
  ServiceRegistry reg;
  reg.add("a", answering(1));
  reg.add("b", answering(2));
  ServiceLookupMemo memo;
  const ServiceEntry* first = reg.lookup_memo("a", memo);
  CHECK(answer_of(first) == 1);
  CHECK(first == reg.lookup("a").get());
  CHECK(reg.lookup_memo("a", memo) == first);
  // Another name refills it.
  CHECK(answer_of(reg.lookup_memo("b", memo)) == 2);
  CHECK(memo.name == "b");
  CHECK(answer_of(reg.lookup_memo("a", memo)) == 1);
}

TEST_CASE("a lookup memo sees an add() that replaced its service, or added one it lacked") {
  ServiceRegistry reg;
  reg.add("a", answering(1));
  ServiceLookupMemo memo;
  CHECK(answer_of(reg.lookup_memo("a", memo)) == 1);
  reg.add("a", answering(10));
  CHECK(answer_of(reg.lookup_memo("a", memo)) == 10);
  // An unknown name: null, and found once added.
  CHECK(reg.lookup_memo("c", memo) == nullptr);
  CHECK(reg.lookup_memo("c", memo) == nullptr);
  reg.add("c", answering(3));
  CHECK(answer_of(reg.lookup_memo("c", memo)) == 3);
  // An add() of another name also refreshes it (any add changes the generation).
  reg.add("d", answering(4));
  CHECK(answer_of(reg.lookup_memo("c", memo)) == 3);
}

TEST_CASE("a lookup memo keeps the entry it gave alive after the service is replaced") {
  ServiceRegistry reg;
  auto witness = std::make_shared<int>(7);
  std::weak_ptr<int> watch = witness;
  ServiceEntry e;
  e.fn = [w = std::move(witness)](const Value&, const PeerIdentity&) -> Result<Value> { return Value(std::int64_t{*w}); };
  reg.add("a", std::move(e));
  ServiceLookupMemo memo;
  const ServiceEntry* held = reg.lookup_memo("a", memo);
  reg.add("a", answering(1));  // the registry lets go of the old entry
  CHECK_FALSE(watch.expired());
  CHECK(answer_of(held) == 7);
  CHECK(answer_of(reg.lookup_memo("a", memo)) == 1);  // refilled: the old entry is gone
  CHECK(watch.expired());
}

TEST_CASE("a lookup memo filled from one registry never answers for another") {
  ServiceRegistry one;
  ServiceRegistry two;
  one.add("a", answering(1));
  two.add("a", answering(2));
  ServiceLookupMemo memo;
  CHECK(answer_of(one.lookup_memo("a", memo)) == 1);
  CHECK(answer_of(two.lookup_memo("a", memo)) == 2);
  ServiceRegistry empty;
  CHECK(empty.lookup_memo("a", memo) == nullptr);
  // A registry made where another was (same address) is not mistaken for it either.
  auto made = std::make_unique<ServiceRegistry>();
  made->add("a", answering(5));
  CHECK(answer_of(made->lookup_memo("a", memo)) == 5);
  made.reset();
  made = std::make_unique<ServiceRegistry>();
  CHECK(made->lookup_memo("a", memo) == nullptr);
}
