// Value graph: table access, shared references, cycles, import across graphs.
#include <doctest/doctest.h>

#include <limits>
#include <stdexcept>

#include "sojourn/core/value.hpp"

using sojourn::Value;

TEST_CASE("scalars report their type and content") {
  CHECK(Value().is_nil());
  CHECK(Value(true).as_bool());
  CHECK(Value(42).as_integer() == 42);
  CHECK(Value(2.5).as_number() == 2.5);
  CHECK(Value(7).as_number() == 7.0);
  CHECK(Value("hi").as_string() == "hi");
  CHECK(Value("hi").type_name() == "string");
  CHECK_FALSE(Value(false).truthy());
  CHECK(Value(0).truthy());
}

TEST_CASE("a table keeps array and map parts and integral float keys are integer keys") {
  Value t = Value::table();
  t.push("a");
  t.push("b");
  t.set("name", "x");
  t.set(Value(3.0), "c");
  CHECK(t.length() == 3);
  CHECK(t.get(3).as_string() == "c");
  CHECK(t.get(Value(1.0)).as_string() == "a");
  CHECK(t.get("name").as_string() == "x");
  CHECK(t.get("missing").is_nil());
  t.set("name", Value());
  CHECK(t.size() == 3);
  t.set(3, Value());
  CHECK(t.length() == 2);
  CHECK_THROWS_AS(t.set(Value(), 1), std::invalid_argument);
  CHECK_THROWS_AS(Value(1).get("x"), std::logic_error);
}

TEST_CASE("tables of one graph reference each other, cycles included") {
  Value root = Value::table();
  Value child = root.new_table();
  child.set("v", 1);
  root.set("a", child);
  root.set("b", child);
  root.set("self", root);
  CHECK(root.get("a").same_table(root.get("b")));
  CHECK(root.get("self").same_table(root));
  root.get("a").set("v", 2);
  CHECK(root.get("b").get("v").as_integer() == 2);
}

TEST_CASE("a table from another graph is deep-copied with its sharing kept") {
  Value other = Value::table();
  Value shared = other.new_table();
  other.set(1, shared);
  other.set(2, shared);
  other.set("loop", other);
  Value root = Value::table();
  root.set("x", other);
  Value x = root.get("x");
  CHECK_FALSE(x.same_table(other));
  CHECK(x.get(1).same_table(x.get(2)));
  CHECK(x.get("loop").same_table(x));
  shared.set("changed", true);  // the copy is independent of the original
  CHECK(x.get(1).get("changed").is_nil());
}

TEST_CASE("deep_equal follows cycles and tells sharing apart") {
  auto make = [](bool share) {
    Value r = Value::table();
    Value a = r.new_table();
    a.set("n", 1);
    r.set(1, a);
    if (share) {
      r.set(2, a);
    } else {
      Value b = r.new_table();
      b.set("n", 1);
      r.set(2, b);
    }
    r.set("me", r);
    return r;
  };
  CHECK(sojourn::deep_equal(make(true), make(true)));
  CHECK(sojourn::deep_equal(make(false), make(false)));
  CHECK_FALSE(sojourn::deep_equal(make(true), make(false)));
  CHECK(sojourn::deep_equal(Value(1), Value(1.0)));
  CHECK_FALSE(sojourn::deep_equal(Value("1"), Value(1)));
}

TEST_CASE("the same table built in a different order has the same layout and compares equal") {
  Value a = Value::table();
  a.set(3, "c");
  a.set(2, "b");
  a.set(1, "a");
  Value b = Value::array({"a", "b", "c"});
  CHECK(a.length() == 3);
  CHECK(sojourn::deep_equal(a, b));
  Value holes = Value::array({1, Value(), 3});
  CHECK(holes.get(3).as_integer() == 3);
  CHECK(holes.get(2).is_nil());
  CHECK(holes.size() == 2);
}

TEST_CASE("a function value reports its text, upvalues and shared cells") {
  Value f = Value::function("function(x) return x + n end", "=eval", 2);
  CHECK(f.type() == Value::Type::function);
  CHECK(f.type_name() == "function");
  CHECK(f.is_function());
  CHECK(f.function_source() == "function(x) return x + n end");
  CHECK(f.function_chunk_name() == "=eval");
  CHECK(f.function_line() == 2);
  CHECK(f.library_name().empty());
  CHECK(f.add_upvalue("n", 5) == 0);
  CHECK(f.upvalue_name(0) == "n");
  CHECK(f.upvalue(0).as_integer() == 5);
  Value g = f.new_function("function() n = n + 1 end", "=eval", 3);
  g.add_upvalue("n", Value());
  CHECK_FALSE(g.same_upvalue(0, f, 0));
  g.join_upvalue(0, f, 0);
  CHECK(g.same_upvalue(0, f, 0));
  g.set_upvalue(0, 6);
  CHECK(f.upvalue(0).as_integer() == 6);
  CHECK_THROWS_AS(f.upvalue(1), std::out_of_range);
  CHECK_THROWS_AS(Value(1).function_source(), std::logic_error);
  CHECK(sojourn::to_debug_string(f) == "function<eval:2>");
  CHECK(sojourn::to_debug_string(Value::library_function("table.insert")) == "function<table.insert>");
}

TEST_CASE("a function put into another graph is copied with its cells, sharing and recursion") {
  Value source = Value::table();
  Value f = source.new_function("function() return f, t end");
  Value t = source.new_table();
  f.add_upvalue("f", f);
  f.add_upvalue("t", t);
  Value g = source.new_function("function() return t end");
  g.add_upvalue("t", Value());
  g.join_upvalue(0, f, 1);
  source.set("f", f);
  source.set("g", g);
  Value root = Value::table();
  root.set("copy", source);  // one import: what source shares stays shared
  Value cf = root.get("copy").get("f"), cg = root.get("copy").get("g");
  CHECK_FALSE(cf.same_function(f));
  CHECK(cf.upvalue(0).same_function(cf));
  CHECK(cg.same_upvalue(0, cf, 1));
  CHECK(sojourn::deep_equal(cf, f));
}

TEST_CASE("deep_equal compares functions by text, upvalue names and cell sharing") {
  auto make = [](bool share, const char* text) {
    Value r = Value::table();
    Value a = r.new_function(text);
    a.add_upvalue("n", 1);
    Value b = r.new_function(text);
    b.add_upvalue("n", 1);
    if (share) b.join_upvalue(0, a, 0);
    r.set(1, a);
    r.set(2, b);
    return r;
  };
  CHECK(sojourn::deep_equal(make(true, "function() return n end"), make(true, "function() return n end")));
  CHECK_FALSE(sojourn::deep_equal(make(true, "function() return n end"), make(false, "function() return n end")));
  CHECK_FALSE(sojourn::deep_equal(make(true, "function() return n end"), make(true, "function() return n + 0 end")));
  CHECK_FALSE(sojourn::deep_equal(Value::function("function() end"), Value::library_function("print")));
  // Where the text came from does not matter.
  CHECK(sojourn::deep_equal(Value::function("function() end", "=a", 1), Value::function("function() end", "=b", 9)));
}

TEST_CASE("array() without nil items has the layout set() gives, foreign tables imported") {
  Value other = Value::table();
  other.set("inner", 5);
  Value made = Value::array({Value(1), Value("two"), Value(3.5), other, Value(true)});
  Value by_set = Value::table();
  by_set.set(1, 1);
  by_set.set(2, "two");
  by_set.set(3, 3.5);
  by_set.set(4, other);
  by_set.set(5, true);
  CHECK(made.length() == 5);
  CHECK(made.size() == 5);
  CHECK(sojourn::deep_equal(made, by_set));
  CHECK(made.get(4).get("inner").as_integer() == 5);
  CHECK_FALSE(made.get(4).same_table(other));  // a copy in the new table's graph
  CHECK(made.get(4).graph() == made.graph());
  // A nil item leaves a hole: what follows it is where set() puts it (the map part).
  Value holes = Value::array({Value(1), Value(), Value(3)});
  CHECK(holes.length() == 1);
  CHECK(holes.size() == 2);
  CHECK(holes.get(3).as_integer() == 3);
  CHECK(Value::array({}).length() == 0);
}

TEST_CASE("get() finds each kind of key as set() stored it") {
  Value t = Value::table();
  Value sub = t.new_table();
  t.push("first");
  t.set("name", "x");
  t.set(true, "yes");
  t.set(2.5, "half");
  t.set(-7, "negative");
  t.set(sub, "by table");
  t.set("", "empty");
  CHECK(t.get("name").as_string() == "x");
  CHECK(t.get("").as_string() == "empty");
  CHECK(t.get("nam").is_nil());
  CHECK(t.get("first").is_nil());  // a value, not a key
  CHECK(t.get(true).as_string() == "yes");
  CHECK(t.get(false).is_nil());
  CHECK(t.get(2.5).as_string() == "half");
  CHECK(t.get(Value(1.0)).as_string() == "first");
  CHECK(t.get(1).as_string() == "first");
  CHECK(t.get(-7).as_string() == "negative");
  CHECK(t.get(Value(-7.0)).as_string() == "negative");
  CHECK(t.get(sub).as_string() == "by table");
  CHECK(t.get(Value::table()).is_nil());  // another graph's table is never a key here
  CHECK_THROWS_AS(t.get(Value()), std::invalid_argument);
  CHECK_THROWS_AS(t.get(Value(std::numeric_limits<double>::quiet_NaN())), std::invalid_argument);
  CHECK_THROWS_AS(Value("s").get("x"), std::logic_error);
}
