// JSON conversion with nlohmann/json (kept out of the public headers).
#include "sojourn/core/json.hpp"

#include <cmath>
#include <unordered_set>

#include <nlohmann/json.hpp>

namespace sojourn {

namespace {

using nlohmann::json;

struct TooDeep {};

Value from_json(const json& j, Value& root, int depth) {
  if (depth > kMaxJsonDepth) throw TooDeep{};
  switch (j.type()) {
    case json::value_t::null: return Value{};
    case json::value_t::boolean: return Value(j.get<bool>());
    case json::value_t::number_integer: return Value(j.get<std::int64_t>());
    case json::value_t::number_unsigned: {
      auto u = j.get<std::uint64_t>();
      if (u <= static_cast<std::uint64_t>(INT64_MAX)) return Value(static_cast<std::int64_t>(u));
      return Value(static_cast<double>(u));
    }
    case json::value_t::number_float: return Value(j.get<double>());
    case json::value_t::string: return Value(j.get_ref<const std::string&>());
    case json::value_t::array: {
      Value t = root.is_table() ? root.new_table() : (root = Value::table());
      std::int64_t i = 1;
      for (const json& item : j) t.set(Value(i++), from_json(item, root, depth + 1));
      return t;
    }
    case json::value_t::object: {
      Value t = root.is_table() ? root.new_table() : (root = Value::table());
      for (const auto& [k, item] : j.items()) t.set(Value(k), from_json(item, root, depth + 1));
      return t;
    }
    default: return Value{};
  }
}

std::string path_key(const Value& k) {
  if (k.is_integer()) return "[" + std::to_string(k.as_integer()) + "]";
  if (k.is_string()) return "." + k.as_string();
  return "[" + to_debug_string(k, 40) + "]";
}

struct JsonError {
  std::string path;
  std::string why;
};

json to_json(const Value& v, std::unordered_set<const void*>& on_path, const std::string& path, int depth) {
  switch (v.type()) {
    case Value::Type::nil: return nullptr;
    case Value::Type::boolean: return v.as_bool();
    case Value::Type::integer: return v.as_integer();
    case Value::Type::number: return v.as_number();
    case Value::Type::string: return v.as_string();
    case Value::Type::function: {
      // Readable, and never read back: JSON input only makes tables and scalars.
      json out = json::object();
      out["$function"] = v.library_name().empty() ? v.function_source() : v.library_name();
      return out;
    }
    case Value::Type::table: break;
  }
  if (depth > kMaxJsonDepth) throw JsonError{path, "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels"};
  if (!on_path.insert(v.table_identity()).second) throw JsonError{path, "it is part of a cycle"};
  json out;
  // Keys exactly 1..n make an array, n = 0 included: an empty table is always [] (a Lua
  // sequence of length zero), whichever JSON or Lua code made it.
  if (v.size() == v.length()) {
    out = json::array();
    v.for_each([&](const Value& k, const Value& item) {
      out.push_back(to_json(item, on_path, path + path_key(k), depth + 1));
    });
  } else {
    out = json::object();
    v.for_each([&](const Value& k, const Value& item) {
      std::string key;
      if (k.is_string()) key = k.as_string();
      else if (k.is_integer()) key = std::to_string(k.as_integer());
      else if (k.is_number()) key = to_debug_string(k);
      else if (k.is_bool()) key = k.as_bool() ? "true" : "false";
      else throw JsonError{path, "it has a " + std::string(k.type_name()) + " as a key"};
      out[key] = to_json(item, on_path, path + path_key(k), depth + 1);
    });
  }
  on_path.erase(v.table_identity());
  return out;
}

}  // namespace

Result<Value> value_from_json(std::string_view text) {
  // Parse without recursion limits of our own first; nlohmann's parser is iterative.
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) {
    try {
      json strict = json::parse(text);  // throws with the position of the error
    } catch (const json::exception& e) {  // a parse_error, or out_of_range for a number past a double
      std::string what = e.what();
      // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." -> from "parse error".
      auto at = what.find("] ");
      return make_error(Errc::invalid_json, "invalid JSON: " + (at == std::string::npos ? what : what.substr(at + 2)));
    }
    return make_error(Errc::invalid_json, "invalid JSON");
  }
  try {
    Value root;
    Value v = from_json(j, root, 0);
    return v;
  } catch (const TooDeep&) {
    return make_error(Errc::invalid_json, "invalid JSON: nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
}

Result<std::string> value_to_json(const Value& v, bool pretty) {
  try {
    std::unordered_set<const void*> on_path;
    json j = to_json(v, on_path, "value", 0);
    return j.dump(pretty ? 2 : -1, ' ', false, json::error_handler_t::replace);
  } catch (const JsonError& e) {
    return make_error(Errc::not_transferable, "value at " + e.path + " cannot be written as JSON: " + e.why);
  }
}

}  // namespace sojourn
