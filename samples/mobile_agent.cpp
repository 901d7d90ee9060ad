// Mobile agent: code and execution state move to where the data is and go on there. Three
// shops each hold their own catalogue; an agent launched at the first visits the others,
// carrying what it found in its state, and reports the cheapest offer home.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <sojourn/agents/node.hpp>
#include <sojourn/core/json.hpp>

namespace {
constexpr const char* kAgent = R"(
local M = {}
function M.start(s)
  s.offers = {}
  return M.visit(s)
end
function M.visit(s)
  local price = (node.call("kv.get", "catalogue") or {})[s.item]
  s.offers[#s.offers + 1] = { shop = node.call("node.info").name, price = price }
  local next_stop = agent.itinerary[1]
  if next_stop then agent.go(next_stop, "visit") end
  table.sort(s.offers, function(a, b) return a.price < b.price end)
  return s.offers[1].shop, s.offers[1].price, #s.offers
end
return M)";
}  // namespace

int main() {
  using namespace sojourn;
  std::vector<std::unique_ptr<Node>> shops;
  std::vector<std::string> addresses;
  const int prices[] = {79, 72, 88};
  for (int i = 0; i < 3; ++i) {
    shops.push_back(std::make_unique<Node>(NodeOptions{.name = "shop-" + std::string(1, static_cast<char>('a' + i))}));
    auto at = shops.back()->listen("127.0.0.1:0");
    if (!at) return 1;
    addresses.push_back(*at);
    Value catalogue = Value::table();
    catalogue.set("disk", prices[i]);
    (void)shops.back()->call_local("kv.put", Value::array({"catalogue", catalogue}));
  }
  auto bundle = single_file_bundle("cheapest", kAgent);
  if (!bundle) return 1;
  AgentLaunch launch;
  launch.bundle = *bundle;
  launch.state = Value::table();
  launch.state.set("item", "disk");
  launch.itinerary = {addresses[1], addresses[2]};
  launch.owner = "sample";
  Node client(NodeOptions{.name = "client"});
  auto id = client.launch(addresses[0], launch);
  if (!id) {
    std::fprintf(stderr, "launch: %s\n", id.error().message.c_str());
    return 1;
  }
  std::printf("[mobile agent] launched %s at %s\n", id->c_str(), addresses[0].c_str());
  auto status = client.wait_agent(addresses[0], *id, std::chrono::seconds(10));
  if (!status || status->status != AgentState::finished) {
    std::fprintf(stderr, "agent: %s\n", status ? status->reason.c_str() : status.error().message.c_str());
    return 1;
  }
  for (const auto& hop : status->hops) {
    std::printf("[mobile agent]   hop %llu: %s, %lld ms there, %llu bytes of state on arrival\n",
                static_cast<unsigned long long>(hop.epoch), hop.node.c_str(), static_cast<long long>(hop.spent_ms),
                static_cast<unsigned long long>(hop.state_bytes));
  }
  std::printf("[mobile agent] cheapest disk: %s at %s (of %s offers)\n", to_debug_string(status->result.get(2)).c_str(),
              status->result.get(1).as_string().c_str(), to_debug_string(status->result.get(3)).c_str());
  return 0;
}
