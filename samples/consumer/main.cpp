// The smallest application: two nodes in one process, a service call and a remote
// evaluation between them over TCP on loopback.
#include <cstdio>

#include <sojourn/agents/node.hpp>

int main() {
  using namespace sojourn;
  Node server(NodeOptions{.name = "server"});
  server.register_service("greet", [](const Value& args) -> Result<Value> {
    return Value("hello, " + args.get(1).as_string());
  });
  auto address = server.listen("127.0.0.1:0");
  if (!address) return 1;
  Node client(NodeOptions{.name = "client"});
  auto greeting = client.call(*address, "greet", Value::array({"consumer"}));
  auto sum = client.eval(*address, "local a, b = ...; return a + b", Value::array({40, 2}));
  if (!greeting || !sum) return 1;
  std::printf("%s, %lld\n", greeting->as_string().c_str(), static_cast<long long>(sum->results.get(1).as_integer()));
  return greeting->as_string() == "hello, consumer" && sum->results.get(1).as_integer() == 42 ? 0 : 1;
}
