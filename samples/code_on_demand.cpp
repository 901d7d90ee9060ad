// Code-on-demand: the code is at a server, the data at the client. A library node publishes
// a Lua module; an analyst node fetches it (verified by its SHA-256, cached) and runs it on
// its own readings. The second fetch finds the hash in the cache: no code crosses the wire.
#include <cstdio>
#include <string>

#include <sojourn/agents/node.hpp>
#include <sojourn/core/json.hpp>

int main() {
  using namespace sojourn;
  Node library(NodeOptions{.name = "library"});
  auto at = library.listen("127.0.0.1:0");
  if (!at) {
    std::fprintf(stderr, "listen: %s\n", at.error().message.c_str());
    return 1;
  }
  auto hash = library.publish("spread", R"(
    local values = node.call("kv.get", "readings") or {}
    local lo, hi = math.huge, -math.huge
    for _, v in ipairs(values) do lo = math.min(lo, v); hi = math.max(hi, v) end
    return hi - lo, #values)");
  if (!hash) return 1;
  std::printf("[code-on-demand] library %s publishes module spread (%s...)\n", at->c_str(), hash->substr(0, 12).c_str());

  Node analyst(NodeOptions{.name = "analyst"});
  (void)analyst.call_local("kv.put", Value::array({"readings", Value::array({12, 17, 9, 30, 21})}));
  for (int round = 1; round <= 2; ++round) {
    auto module = analyst.fetch(*at, "spread");
    if (!module) {
      std::fprintf(stderr, "fetch: %s\n", module.error().message.c_str());
      return 1;
    }
    auto result = analyst.run_module(*module);
    if (!result) {
      std::fprintf(stderr, "run: %s\n", result.error().message.c_str());
      return 1;
    }
    std::printf("[code-on-demand] analyst fetch #%d: %s; ran here on 5 local readings -> spread %s\n", round,
                module->from_cache ? "hash already cached, no code sent" : "code received and verified",
                to_debug_string(result->get(1)).c_str());
  }
  std::printf("[code-on-demand] bundles the library sent: %llu\n",
              static_cast<unsigned long long>(library.stats().bundles_sent));
  return 0;
}
