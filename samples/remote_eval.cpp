// Remote evaluation: the client has the code, the server has the resource. Instead
// of pulling every reading over the network, the client ships a small Lua chunk that
// runs next to the data and returns only the answer.
#include <cstdio>
#include <string>

#include <sojourn/agents/node.hpp>
#include <sojourn/core/json.hpp>
#include <sojourn/core/messages.hpp>

int main() {
  using namespace sojourn;
  Node sensor(NodeOptions{.name = "sensor"});
  auto bound = sensor.listen("127.0.0.1:0");
  if (!bound) return 1;
  const std::string peer = *bound;

  Node analyst(NodeOptions{.name = "analyst"});
  // Load a day of readings into the sensor node's key-value store.
  Value readings = Value::table();
  for (int minute = 0; minute < 1440; ++minute) readings.push(Value(20.0 + (minute % 97) * 0.05));
  if (!analyst.call(peer, "kv.put", Value::array({"temps", readings}))) return 1;
  std::size_t data_bytes = encode_value(readings).size();

  const char* chunk = R"(
    local threshold = ...
    local temps = node.call("kv.get", "temps")
    local hot, sum = 0, 0
    for i = 1, #temps do
      sum = sum + temps[i]
      if temps[i] > threshold then hot = hot + 1 end
    end
    return { mean = sum / #temps, minutes_above = hot }
  )";
  std::printf("[remote-eval] analyst -> sensor %s: a %zu-byte Lua chunk instead of fetching %zu bytes of readings\n",
              peer.c_str(), std::string(chunk).size(), data_bytes);
  EvalOptions options;
  options.chunk_name = "hot_minutes.lua";
  options.limits.cpu_instructions = 10'000'000;
  auto r = analyst.eval(peer, chunk, Value::array({24.5}), options);
  if (!r) {
    std::fprintf(stderr, "eval failed: %s\n", r.error().message.c_str());
    return 1;
  }
  std::printf("[remote-eval]   <- %s (ran at the sensor, isolation: %s)\n", value_to_json(r->results.get(1))->c_str(),
              std::string(isolation_name(r->isolation)).c_str());

  auto runaway = analyst.eval(peer, "while true do end", Value::table(), options);
  std::printf("[remote-eval]   <- a runaway chunk is stopped: %s\n", runaway.error().message.c_str());
  auto after = analyst.eval(peer, "return node.call('node.info').requests_served");
  std::printf("[remote-eval]   <- and the sensor keeps serving: %s requests so far\n",
              after ? value_to_json(after->results.get(1))->c_str() : after.error().message.c_str());
  return 0;
}
