// JSON conversion for the command line.
#include <doctest/doctest.h>

#include <string>

#include "sojourn/core/json.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;

TEST_CASE("JSON arrays and objects become tables and print back the same") {
  auto v = value_from_json(R"(["k", {"x": 1, "y": [true, null, 2.5]}])");
  REQUIRE(v.ok());
  CHECK(v->get(1).as_string() == "k");
  CHECK(v->get(2).get("x").as_integer() == 1);
  CHECK(v->get(2).get("y").get(3).as_number() == 2.5);
  auto text = value_to_json(v->get(2).get("x"));
  CHECK(*text == "1");
  CHECK(*value_to_json(Value::array({1, "a"})) == R"([1,"a"])");
  Value obj = Value::table();
  obj.set("b", 2);
  obj.set(7, "seven");
  CHECK(*value_to_json(obj) == R"({"7":"seven","b":2})");
}

TEST_CASE("an empty table prints as [] however it was made: from [], from {}, emptied, nested or pretty") {
  CHECK(*value_to_json(Value::table()) == "[]");
  CHECK(*value_to_json(*value_from_json("[]")) == "[]");
  CHECK(*value_to_json(*value_from_json("{}")) == "[]");
  CHECK(*value_to_json(*value_from_json(R"({"a": {}, "b": [[], {}]})")) == R"({"a":[],"b":[[],[]]})");
  Value emptied = Value::table();
  emptied.set("k", 1);
  emptied.set(1, 2);
  emptied.set("k", Value{});
  emptied.set(1, Value{});
  CHECK(emptied.size() == 0);
  CHECK(*value_to_json(emptied) == "[]");
  CHECK(*value_to_json(Value::table(), true) == "[]");
  // A table with a hole is not a sequence: an object.
  Value holes = Value::table();
  holes.set(1, "a");
  holes.set(3, "c");
  CHECK(*value_to_json(holes) == R"({"1":"a","3":"c"})");
}

TEST_CASE("invalid or too deeply nested JSON is refused with a clear message") {
  auto bad = value_from_json("[1,");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == Errc::invalid_json);
  CHECK(bad.error().message.rfind("invalid JSON: parse error at line 1, column 4", 0) == 0);
  auto deep = value_from_json(std::string(300, '[') + std::string(300, ']'));
  CHECK_ERROR(deep, Errc::invalid_json, "200 levels");
}

TEST_CASE("a cycle cannot be written as JSON and the path says where") {
  Value root = Value::table();
  Value inner = root.new_table();
  root.set("a", inner);
  inner.set("back", root);
  auto r = value_to_json(root);
  REQUIRE_FALSE(r.ok());
  CHECK_ERROR(r, Errc::not_transferable, "value.a.back", "cycle");
  // Shared but acyclic references are written twice.
  Value s = Value::table();
  Value shared = s.new_table();
  shared.set("v", 1);
  s.set(1, shared);
  s.set(2, shared);
  CHECK(*value_to_json(s) == R"([{"v":1},{"v":1}])");
}

TEST_CASE("a function is written as its text and JSON never makes one") {
  Value t = Value::table();
  t.set("cb", Value::function("function(x) return x end"));
  t.set("ins", Value::library_function("table.insert"));
  CHECK(*value_to_json(t) == R"({"cb":{"$function":"function(x) return x end"},"ins":{"$function":"table.insert"}})");
  auto back = value_from_json(R"({"$function": "function() end"})");
  REQUIRE(back.ok());
  CHECK(back->is_table());
  CHECK(back->get("$function").as_string() == "function() end");
}
