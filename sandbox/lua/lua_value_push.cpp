// Value -> Lua: tables are created breadth-first from a work list, with a memo table that
// maps each graph table to its Lua table, so sharing and cycles come out as they went in.
#include "lua_value.hpp"

#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include <lua.hpp>

namespace sojourn::sandbox::lua {

namespace {

using ::sojourn::detail::Graph;
using ::sojourn::detail::Slot;
using ::sojourn::detail::TableData;
using ::sojourn::detail::TableRef;

// One instance per push, with the memo table (graph index + 1 -> Lua table) on the stack
// below the pushed values.
class ValueToLua {
 public:
  ValueToLua(lua_State* L, const Graph* graph) : L_(L), graph_(graph) {
    if (graph_ != nullptr) {
      lua_createtable(L_, 0, 0);
      memo_ = lua_gettop(L_);
    }
  }

  void push(const Slot& slot) {
    switch (slot.index()) {
      case 0: lua_pushnil(L_); break;
      case 1: lua_pushboolean(L_, std::get<bool>(slot) ? 1 : 0); break;
      case 2: lua_pushnumber(L_, static_cast<lua_Number>(std::get<std::int64_t>(slot))); break;
      case 3: lua_pushnumber(L_, std::get<double>(slot)); break;
      case 4: {
        const std::string& s = std::get<std::string>(slot);
        lua_pushlstring(L_, s.data(), s.size());
        break;
      }
      default: push_table(std::get<TableRef>(slot).index); break;
    }
  }

  // Fills the tables created so far, then drops the memo below the pushed values.
  void finish() {
    if (graph_ == nullptr) return;
    while (!pending_.empty()) {
      const std::uint32_t index = pending_.back();
      pending_.pop_back();
      lua_rawgeti(L_, memo_, static_cast<int>(index) + 1);
      fill(lua_gettop(L_), graph_->tables[index]);
      lua_pop(L_, 1);
    }
    lua_remove(L_, memo_);
  }

 private:
  void push_table(std::uint32_t index) {
    lua_rawgeti(L_, memo_, static_cast<int>(index) + 1);
    if (!lua_isnil(L_, -1)) return;
    lua_pop(L_, 1);
    const TableData& data = graph_->tables[index];
    lua_createtable(L_, static_cast<int>(std::min<std::size_t>(data.array.size(), INT_MAX)),
                    static_cast<int>(std::min<std::size_t>(data.map.size(), INT_MAX)));
    lua_pushvalue(L_, -1);
    lua_rawseti(L_, memo_, static_cast<int>(index) + 1);
    pending_.push_back(index);
  }

  void fill(int table, const TableData& data) {
    for (std::size_t i = 0; i < data.array.size(); ++i) {
      if (data.array[i].index() == 0) continue;
      push(data.array[i]);
      lua_rawseti(L_, table, static_cast<int>(i + 1));
    }
    for (const auto& [key, value] : data.map) {
      if (key.index() == 0 || value.index() == 0) continue;
      push(key);
      push(value);
      lua_rawset(L_, table);
    }
  }

  lua_State* L_;
  const Graph* graph_;
  int memo_ = 0;
  std::vector<std::uint32_t> pending_;
};

}  // namespace

void push_value(lua_State* L, const Value& value) {
  lua_checkstack(L, 6);
  ValueToLua pusher(L, value.is_table() ? value.graph().get() : nullptr);
  pusher.push(value.slot());
  pusher.finish();
}

int push_array_items(lua_State* L, const Value& array) {
  if (!array.is_table()) return 0;
  const Graph* graph = array.graph().get();
  const TableData& root = graph->tables[std::get<TableRef>(array.slot()).index];
  const std::size_t count = array.length();
  if (count > static_cast<std::size_t>(INT_MAX - 8) || !lua_checkstack(L, static_cast<int>(count) + 6)) {
    luaL_error(L, "too many arguments (%d)", static_cast<int>(std::min<std::size_t>(count, INT_MAX)));
  }
  const bool has_tables = std::any_of(root.array.begin(), root.array.begin() + static_cast<std::ptrdiff_t>(count),
                                      [](const Slot& s) { return s.index() == 5; });
  ValueToLua pusher(L, has_tables ? graph : nullptr);
  for (std::size_t i = 0; i < count; ++i) pusher.push(root.array[i]);
  pusher.finish();
  return static_cast<int>(count);
}

}  // namespace sojourn::sandbox::lua
