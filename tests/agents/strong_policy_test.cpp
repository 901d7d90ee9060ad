// Strong mobility between nodes (issue 13) under policies: a rule with strong: false, and a
// signed manifest asking for strong mobility, refused per signer.
#include <doctest/doctest.h>

#include <memory>
#include <string>

#include "sojourn/agents/node.hpp"
#include "sojourn/agents/policy.hpp"
#include "tests/agents/strong_support.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/trust_nodes.hpp"

using namespace sojourn;
using namespace sojourn::strong_test;
using namespace std::chrono_literals;
using sojourn::test::Cluster;

TEST_CASE("a policy rule with strong: false refuses strong agents and keeps weak ones") {
  auto policy = Policy::parse(R"({"default": {"name": "no-images", "strong": false, "isolation": ["process"]}})");
  REQUIRE_MESSAGE(policy.ok(), (policy.ok() ? "" : policy.error().message));
  CHECK_FALSE(policy->default_rule().allow_strong);
  CHECK_ERROR(Policy::parse(R"({"default": {"strong": "no"}})"), Errc::bad_policy, "default.strong", "must be true or false");
  auto shared = std::make_shared<const Policy>(std::move(*policy));
  Cluster c(1, [shared](int, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.policy = shared;
  });
  CHECK_ERROR(launch_strong(c[0], bundle_of(kHop)), Errc::policy_refused, "rule no-images refuses strong agents of unsigned code");
  AgentLaunch weak;
  weak.bundle = bundle_of("function start() return 'weak ok' end");
  auto id = c[0].launch({}, weak);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::finished);
  CHECK(s.hops[0].mobility == "weak");
}

TEST_CASE("a signed manifest asking for strong mobility makes a strong agent, and a policy refuses it per signer") {
  auto alice = test::new_key();
  auto bob = test::new_key();
  auto policy = test::policy_from(R"({"keys": {"alice": ")" + alice->fingerprint() + R"("},
    "rules": [{"name": "alice-weak-only", "signer": "alice", "strong": false, "isolation": ["process"]}],
    "default": {"isolation": ["process"]}})");
  Cluster c(2, [policy](int, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.policy = policy;
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  Bundle strong = bundle_of(kHop);
  strong.manifest.mobility = "strong";
  // The launch itself asks for nothing: the signed manifest makes the agent strong, so its
  // agent.go(peer) returns on the peer with its locals.
  AgentLaunch l;
  l.bundle = strong;
  l.state = state;
  l.signing_key = bob;
  auto id = c[0].launch({}, l);
  REQUIRE_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::finished);
  CHECK(s.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
  REQUIRE(s.hops.size() == 2);
  CHECK(s.hops[0].mobility == "strong");
  CHECK(s.hops[1].mobility == "strong");
  // The same strong bundle signed by alice: her rule refuses strong agents, at launch.
  l.signing_key = alice;
  CHECK_ERROR(c[0].launch({}, l), Errc::policy_refused, "rule alice-weak-only refuses strong agents of");
  // A launch option asking for strong is written into the manifest she signs: refused too.
  AgentLaunch asked;
  asked.bundle = bundle_of(kHop);
  asked.state = state;
  asked.signing_key = alice;
  asked.mobility = Mobility::strong;
  CHECK_ERROR(c[0].launch({}, asked), Errc::policy_refused, "rule alice-weak-only refuses strong agents of");
  // Her weak agents run.
  AgentLaunch weak;
  weak.bundle = bundle_of("function start() return 'weak ok' end");
  weak.signing_key = alice;
  auto weak_id = c[0].launch({}, weak);
  REQUIRE(weak_id.ok());
  AgentStatus w = run_to_end(c[0], *weak_id);
  CHECK(w.result.get(1).as_string() == "weak ok");
  CHECK(w.hops[0].mobility == "weak");
}
