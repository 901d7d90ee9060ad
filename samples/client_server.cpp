// Client-server: the code and the resource stay at the server; the client sends a
// request and gets the result. A warehouse node offers a C++ service; a shop node
// calls it with the blocking API and then with the coroutine API.
#include <sojourn/agents/node_async.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_future.hpp>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <sojourn/agents/node.hpp>
#include <sojourn/core/json.hpp>

int main(int argc, char** argv) {
  using namespace sojourn;
  // With an address, call that node's kv.get; without, run both nodes here.
  std::string peer = argc > 1 ? argv[1] : "";

  Node warehouse(NodeOptions{.name = "warehouse"});
  const std::map<std::string, int> stock = {{"disk", 12}, {"ram", 0}, {"cpu", 3}};
  warehouse.register_service("stock.check", [stock](const Value& args) -> Result<Value> {
    Value item = args.get(1);
    if (!item.is_string()) return make_error(Errc::invalid_argument, "invalid argument: stock.check expects an item name");
    auto it = stock.find(item.as_string());
    return Value(it == stock.end() ? 0 : it->second);
  });
  if (peer.empty()) {
    auto bound = warehouse.listen("127.0.0.1:0");
    if (!bound) {
      std::fprintf(stderr, "listen: %s\n", bound.error().message.c_str());
      return 1;
    }
    peer = *bound;
  }

  Node shop(NodeOptions{.name = "shop"});
  std::printf("[client-server] shop -> %s: stock.check(\"disk\")\n", peer.c_str());
  auto disks = shop.call(peer, "stock.check", Value::array({"disk"}));
  if (!disks) {
    std::fprintf(stderr, "call failed: %s\n", disks.error().message.c_str());
    return 1;
  }
  std::printf("[client-server]   <- %lld disks in stock (blocking API)\n", static_cast<long long>(disks->as_integer()));

  // The same with C++20 coroutines: several calls in flight on one connection.
  const std::vector<std::string> items = {"ram", "cpu", "gpu"};
  auto check_all = [&]() -> asio::awaitable<std::string> {
    std::string line;
    for (const std::string& item : items) {
      Value args = Value::array({item});
      auto n = co_await async_call(shop, peer, "stock.check", args);
      line += item + "=" + (n ? std::to_string(n->as_integer()) : n.error().message) + " ";
    }
    co_return line;
  };
  std::string line = asio::co_spawn(node_executor(shop), check_all(), asio::use_future).get();
  std::printf("[client-server]   <- %s(coroutine API)\n", line.c_str());

  auto bad = shop.call(peer, "stock.check", Value::array({42}));
  std::printf("[client-server]   <- a bad request is answered with an error: %s\n", bad.error().message.c_str());
  return 0;
}
