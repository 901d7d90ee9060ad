// Lua -> Value: tables are walked breadth-first through a Lua-side queue (no recursion, so a
// deep chain of tables cannot overflow the C stack), and each Lua table's identity maps to
// one graph table, so shared tables and cycles come out as they went in.
#include "lua_value.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <new>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <lua.hpp>

namespace sojourn::sandbox::lua {

namespace {

using ::sojourn::detail::Graph;
using ::sojourn::detail::Slot;
using ::sojourn::detail::TableData;
using ::sojourn::detail::TableRef;

constexpr std::uint32_t kNoParent = UINT32_MAX;
constexpr double kExactIntegerBound = 9007199254740992.0;  // 2^53
constexpr double kKeyIntegerBound = 9.2e18;                // Value's own key normalisation
constexpr std::size_t kSlotCost = sizeof(Slot);
constexpr std::size_t kTableCost = sizeof(TableData) + 64;  // + path step, identity map node

Error memory_error(std::uint64_t max_bytes) {
  return make_error(Errc::memory_limit, "memory limit of " + std::to_string(max_bytes) + " bytes exceeded");
}

Slot number_slot(double d) {
  if (d == std::floor(d) && std::fabs(d) < kExactIntegerBound && !(d == 0 && std::signbit(d))) {
    return Slot{static_cast<std::int64_t>(d)};
  }
  return Slot{d};
}

Slot key_number_slot(double d) {
  if (d == std::floor(d) && std::fabs(d) < kKeyIntegerBound) return Slot{static_cast<std::int64_t>(d)};
  return Slot{d};
}

bool is_lua_identifier(const std::string& s) {
  static constexpr const char* kKeywords[] = {"and", "break", "do", "else", "elseif", "end", "false",
                                              "for", "function", "goto", "if", "in", "local", "nil",
                                              "not", "or", "repeat", "return", "then", "true", "until",
                                              "while"};
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return std::none_of(std::begin(kKeywords), std::end(kKeywords), [&](const char* k) { return s == k; });
}

// One step of a path, Lua-like: .name, [3], [1.5], [true], ["odd key"], [<table>].
std::string path_segment(const Slot& key) {
  switch (key.index()) {
    case 1: return std::get<bool>(key) ? "[true]" : "[false]";
    case 2: return std::string("[").append(std::to_string(std::get<std::int64_t>(key))).append("]");
    case 3: {
      char buf[40];
      std::snprintf(buf, sizeof buf, "[%.17g]", std::get<double>(key));
      return buf;
    }
    case 4: {
      const std::string& s = std::get<std::string>(key);
      if (is_lua_identifier(s)) return std::string(".").append(s);
      std::string out = "[\"";
      const std::size_t shown = std::min<std::size_t>(s.size(), 40);
      for (std::size_t i = 0; i < shown; ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '"' || c == '\\') {
          out += '\\';
          out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f) {
          out += '\\';
          out += std::to_string(c);
        } else {
          out += static_cast<char>(c);
        }
      }
      if (shown < s.size()) out += "...";
      return out + "\"]";
    }
    case 5: return "[<table>]";
    default: return "[?]";
  }
}

const char* untransferable_reason(int type) {
  switch (type) {
    case LUA_TFUNCTION: return "functions are not supported yet";
    case LUA_TUSERDATA:
    case LUA_TLIGHTUSERDATA: return "userdata cannot travel";
    case LUA_TTHREAD: return "coroutines cannot travel";
    default: return "this type cannot travel";
  }
}

// Lua -> Value. Runs inside a protected call: the only Lua errors it can meet are memory
// errors from growing the queue, which keeps every table found but not yet visited.
class LuaToValue {
 public:
  LuaToValue(const ToValueOptions& options, bool as_array) : options_(options), as_array_(as_array) {}

  // The values are at stack 1..count and the queue table at count + 1.
  void convert(lua_State* L, int count) {
    queue_ = count + 1;
    if (as_array_) {
      result = Value::table();
      graph_ = result.graph().get();
      steps_.push_back(PathStep{kNoParent, Slot{}, false});
      for (int i = 1; i <= count; ++i) {
        const Slot key{static_cast<std::int64_t>(i)};
        std::optional<Slot> item = slot_of(L, i, 0, key, false);
        if (!item) return;
        if (item->index() == 0) continue;
        if (!charge(kSlotCost)) return;
        TableData& root = graph_->tables[0];
        if (root.array.size() + 1 == static_cast<std::size_t>(i) && root.map.empty()) {
          root.array.push_back(std::move(*item));
        } else {
          root.map.emplace_back(key, std::move(*item));
        }
      }
    } else if (lua_type(L, 1) == LUA_TTABLE) {
      result = Value::table();
      graph_ = result.graph().get();
      if (!charge(kTableCost)) return;
      seen_.emplace(lua_topointer(L, 1), 0);
      steps_.push_back(PathStep{kNoParent, Slot{}, false});
      enqueue(L, 1, 0);
    } else {
      std::optional<Slot> only = slot_of(L, 1, kNoParent, Slot{}, false);
      if (only) result = Value::from_slot(nullptr, std::move(*only));
      return;
    }
    for (std::size_t q = 0; q < queued_.size(); ++q) {
      lua_rawgeti(L, queue_, static_cast<int>(q + 1));
      fill_table(L, lua_gettop(L), queued_[q]);
      if (error) return;
      lua_pop(L, 1);
    }
  }

  std::optional<Error> error;
  Value result;

 private:
  struct PathStep {
    std::uint32_t parent;
    Slot key;
    bool is_key;  // the table is itself a key of its parent
  };

  bool charge(std::size_t bytes) {
    used_ += bytes;
    if (options_.max_bytes != 0 && used_ > options_.max_bytes) {
      error = memory_error(options_.max_bytes);
      return false;
    }
    return true;
  }

  std::string path_of(std::uint32_t table) const {
    std::vector<std::uint32_t> chain;
    for (std::uint32_t t = table; t != kNoParent; t = steps_[t].parent) chain.push_back(t);
    std::string path(options_.root_name);
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      const PathStep& step = steps_[*it];
      if (step.parent == kNoParent) continue;
      path += step.is_key ? "[<key>]" : path_segment(step.key);
    }
    return path;
  }

  void fail_untransferable(lua_State* L, int index, std::uint32_t owner, const Slot& key, bool is_key) {
    const int type = lua_type(L, index);
    std::string path = owner == kNoParent ? std::string(options_.root_name) : path_of(owner);
    if (is_key) {
      path += "[<" + std::string(lua_typename(L, type)) + ">]";
    } else if (owner != kNoParent) {
      path += path_segment(key);
    }
    error = make_error(Errc::not_transferable,
                       "value at " + path + " cannot travel: " + untransferable_reason(type));
  }

  void enqueue(lua_State* L, int index, std::uint32_t table) {
    queued_.push_back(table);
    lua_pushvalue(L, index);
    lua_rawseti(L, queue_, static_cast<int>(queued_.size()));
  }

  // The slot for the Lua value at `index`, found under `key` of table `owner`.
  std::optional<Slot> slot_of(lua_State* L, int index, std::uint32_t owner, const Slot& key, bool is_key) {
    switch (lua_type(L, index)) {
      case LUA_TNIL: return Slot{};
      case LUA_TBOOLEAN: return Slot{lua_toboolean(L, index) != 0};
      case LUA_TNUMBER: {
        const double d = lua_tonumber(L, index);
        return is_key ? key_number_slot(d) : number_slot(d);
      }
      case LUA_TSTRING: {
        std::size_t len = 0;
        const char* s = lua_tolstring(L, index, &len);
        if (!charge(len)) return std::nullopt;
        return Slot{std::string(s, len)};
      }
      case LUA_TTABLE: {
        auto [it, inserted] = seen_.try_emplace(lua_topointer(L, index), 0);
        if (!inserted) return Slot{TableRef{it->second}};
        if (!charge(kTableCost)) return std::nullopt;
        const auto table = static_cast<std::uint32_t>(graph_->tables.size());
        it->second = table;
        graph_->tables.emplace_back();
        steps_.push_back(PathStep{owner, is_key ? Slot{} : key, is_key});
        enqueue(L, index, table);
        return Slot{TableRef{table}};
      }
      default:
        fail_untransferable(L, index, owner, key, is_key);
        return std::nullopt;
    }
  }

  // Converts the Lua table at stack `index` into graph table `table`: keys 1..n without a
  // hole go to the array part, every other key to the map (Value's canonical form).
  void fill_table(lua_State* L, int index, std::uint32_t table) {
    std::size_t n = 0;
    for (;;) {
      lua_rawgeti(L, index, static_cast<int>(n + 1));
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        break;
      }
      const Slot key{static_cast<std::int64_t>(n + 1)};
      std::optional<Slot> item = slot_of(L, lua_gettop(L), table, key, false);
      lua_pop(L, 1);
      if (!item || !charge(kSlotCost)) return;
      graph_->tables[table].array.push_back(std::move(*item));
      ++n;
    }
    lua_pushnil(L);
    while (lua_next(L, index) != 0) {
      const int value_index = lua_gettop(L);
      const int key_index = value_index - 1;
      if (lua_type(L, key_index) == LUA_TNUMBER) {
        const double d = lua_tonumber(L, key_index);
        if (d >= 1 && d <= static_cast<double>(n) && d == std::floor(d)) {
          lua_pop(L, 1);
          continue;
        }
      }
      std::optional<Slot> key = slot_of(L, key_index, table, Slot{}, true);
      if (!key) return;
      std::optional<Slot> value = slot_of(L, value_index, table, *key, false);
      if (!value || !charge(2 * kSlotCost)) return;
      lua_pop(L, 1);
      graph_->tables[table].map.emplace_back(std::move(*key), std::move(*value));
    }
  }

  const ToValueOptions& options_;
  const bool as_array_;
  Graph* graph_ = nullptr;  // result's graph, filled directly: Value::set is linear per key
  std::vector<PathStep> steps_;                        // per graph table, for paths
  std::unordered_map<const void*, std::uint32_t> seen_;  // Lua table -> graph table
  std::vector<std::uint32_t> queued_;                  // graph table of queue slot i + 1
  int queue_ = 0;
  std::size_t used_ = 0;
};

int convert_protected(lua_State* L) {
  auto* converter = static_cast<LuaToValue*>(lua_touserdata(L, -1));
  lua_pop(L, 1);
  const int count = lua_gettop(L);
  lua_createtable(L, 0, 0);
  try {
    converter->convert(L, count);
  } catch (const std::bad_alloc&) {
    converter->error = make_error(Errc::memory_limit, "out of memory while converting a Lua value");
  } catch (const std::exception& e) {
    converter->error = make_error(Errc::invalid_argument, std::string("invalid argument: ") + e.what());
  }
  return 0;
}

// Converts and pops the `count` values on top of the stack.
Result<Value> convert_top(lua_State* L, int count, bool as_array, const ToValueOptions& options) {
  LuaToValue converter(options, as_array);
  lua_checkstack(L, 3);
  lua_pushcfunction(L, convert_protected);
  lua_insert(L, -(count + 1));
  // SAFETY: the converter outlives the protected call, which is the only reader.
  lua_pushlightuserdata(L, &converter);
  const int status = lua_pcall(L, count + 1, 0, 0);
  if (status != 0) {
    std::size_t len = 0;
    const char* message = lua_tolstring(L, -1, &len);
    std::string text = message != nullptr ? std::string(message, len) : std::string("error object");
    lua_pop(L, 1);
    if (status == LUA_ERRMEM) return memory_error(options.max_bytes);
    return make_error(Errc::invalid_argument, "invalid argument: " + text);
  }
  if (converter.error) return std::move(*converter.error);
  return std::move(converter.result);
}

}  // namespace

Result<Value> to_value(lua_State* L, int index, const ToValueOptions& options) {
  lua_checkstack(L, 1);
  lua_pushvalue(L, index);
  return convert_top(L, 1, false, options);
}

Result<Value> pop_as_array(lua_State* L, int count, const ToValueOptions& options) {
  return convert_top(L, count, true, options);
}

}  // namespace sojourn::sandbox::lua
