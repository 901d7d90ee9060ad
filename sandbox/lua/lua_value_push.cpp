// Value -> Lua: tables and functions are created breadth-first from a work list, with memo
// tables that map each graph table and function to its Lua object, so sharing and cycles
// come out as they went in; upvalue cells shared in the graph are joined with upvaluejoin.
#include "sandbox/lua/lua_value.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include <lua.hpp>

#include "sandbox/lua/lua_function.hpp"
#include "sandbox/lua/lua_limits.hpp"

namespace sojourn::sandbox::lua {

namespace {

using ::sojourn::detail::FunctionData;
using ::sojourn::detail::FunctionRef;
using ::sojourn::detail::Graph;
using ::sojourn::detail::Slot;
using ::sojourn::detail::TableData;
using ::sojourn::detail::TableRef;

constexpr std::uint32_t kNoHome = UINT32_MAX;
constexpr std::uint32_t kPollMask = 1023;  // the limits are polled every 1024 values

// One instance per push, with the memo tables (graph index + 1 -> Lua table, the same for
// functions, and compiled wrappers) on the stack below the pushed values.
class ValueToLua {
 public:
  ValueToLua(lua_State* L, const Graph* graph) : L_(L), graph_(graph) {
    if (graph_ != nullptr) {
      lua_createtable(L_, 0, 0);
      memo_ = lua_gettop(L_);
      lua_createtable(L_, 0, 0);
      function_memo_ = memo_ + 1;
      lua_createtable(L_, 0, 0);
      makers_ = memo_ + 2;
      cell_homes_.assign(graph_->cells.size(), Home{kNoHome, 0});
    }
  }

  void push(const Slot& slot) {
    // Pushing a large graph takes time the count hook does not see.
    if ((++pushed_ & kPollMask) == 0) sandbox::detail::poll_limits(L_);
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
      case 5: push_table(std::get<TableRef>(slot).index); break;
      default: push_function(std::get<FunctionRef>(slot).index); break;
    }
  }

  // Fills the tables and functions created so far, then drops the memos below the pushed values.
  void finish() {
    if (graph_ == nullptr) return;
    while (!pending_.empty() || !pending_functions_.empty()) {
      if (!pending_.empty()) {
        const std::uint32_t index = pending_.back();
        pending_.pop_back();
        lua_rawgeti(L_, memo_, static_cast<int>(index) + 1);
        fill(lua_gettop(L_), graph_->tables[index]);
        lua_pop(L_, 1);
      } else {
        const std::uint32_t index = pending_functions_.back();
        pending_functions_.pop_back();
        lua_rawgeti(L_, function_memo_, static_cast<int>(index) + 1);
        set_upvalues(lua_gettop(L_), index);
        lua_pop(L_, 1);
      }
    }
    lua_remove(L_, makers_);
    lua_remove(L_, function_memo_);
    lua_remove(L_, memo_);
  }

 private:
  // The function and upvalue number that first received a cell: later users join it.
  struct Home {
    std::uint32_t function;
    int upvalue;
  };

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

  void push_function(std::uint32_t index) {
    lua_rawgeti(L_, function_memo_, static_cast<int>(index) + 1);
    if (!lua_isnil(L_, -1)) return;
    lua_pop(L_, 1);
    push_rebuilt_function(L_, graph_->functions[index], makers_);
    lua_pushvalue(L_, -1);
    lua_rawseti(L_, function_memo_, static_cast<int>(index) + 1);
    if (graph_->functions[index].library_name.empty()) pending_functions_.push_back(index);
  }

  // The rebuilt function's upvalues are matched by name: each gets its cell's value, or,
  // when another function already holds that cell, is joined to it.
  void set_upvalues(int fn, std::uint32_t index) {
    const FunctionData& data = graph_->functions[index];
    for (int i = 1;; ++i) {
      const char* name = lua_getupvalue(L_, fn, i);
      if (name == nullptr) break;
      lua_pop(L_, 1);
      const int slot = upvalue_slot(data, name);
      if (slot < 0 || static_cast<std::size_t>(slot) >= data.upvalue_cells.size() ||
          data.upvalue_cells[static_cast<std::size_t>(slot)] >= cell_homes_.size()) {
        continue;
      }
      const std::uint32_t cell = data.upvalue_cells[static_cast<std::size_t>(slot)];
      Home& home = cell_homes_[cell];
      if (home.function == kNoHome) {
        home = Home{index, i};
        push(graph_->cells[cell]);
        lua_setupvalue(L_, fn, i);
      } else {
        lua_rawgeti(L_, function_memo_, static_cast<int>(home.function) + 1);
        lua_upvaluejoin(L_, fn, i, lua_gettop(L_), home.upvalue);
        lua_pop(L_, 1);
      }
    }
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
  int function_memo_ = 0;
  int makers_ = 0;  // compiled wrappers by function, shared by closures of one function
  std::vector<std::uint32_t> pending_;
  std::vector<std::uint32_t> pending_functions_;
  std::vector<Home> cell_homes_;
  std::uint32_t pushed_ = 0;
};

bool is_reference(const Slot& s) { return s.index() == 5 || s.index() == 6; }

const Value* pushed_value(lua_State* L) {
  // SAFETY: the light userdata was pushed by the caller below from a live Value.
  return static_cast<const Value*>(lua_touserdata(L, 1));
}

int push_value_entry(lua_State* L) {
  const Value& value = *pushed_value(L);
  lua_settop(L, 0);
  push_value(L, value);
  return 1;
}

int push_items_entry(lua_State* L) {
  const Value& array = *pushed_value(L);
  lua_settop(L, 0);
  return push_array_items(L, array);
}

// Runs `entry` under lua_pcall and maps its failure to an Error.
Result<int> push_protected(lua_State* L, lua_CFunction entry, const Value& value, std::uint64_t memory_bytes) {
  const int top = lua_gettop(L);
  if (!lua_checkstack(L, 3)) return errors::memory_limit(memory_bytes);
  lua_pushcfunction(L, entry);
  lua_pushlightuserdata(L, const_cast<Value*>(&value));
  const int status = lua_pcall(L, 1, LUA_MULTRET, 0);
  if (status == 0) return lua_gettop(L) - top;
  std::size_t len = 0;
  const char* text = lua_tolstring(L, -1, &len);
  std::string message = text != nullptr ? std::string(text, len) : std::string("error object");
  lua_pop(L, 1);
  if (status == LUA_ERRMEM) return errors::memory_limit(memory_bytes);
  constexpr std::string_view kRefused = "refused by the sandbox: ";
  if (message.compare(0, kRefused.size(), kRefused) == 0) return make_error(Errc::sandbox_refused, std::move(message));
  return errors::invalid_argument(message);
}

// Pushes a table whose keys and values are all scalars (a service's usual reply, {x = 1})
// without the memo tables, which only serve sharing, cycles and functions: three Lua tables of
// garbage per push. Few enough entries that the push would not poll the limits either. False,
// with nothing pushed, for any other value.
bool push_flat_table(lua_State* L, const Value& value) {
  if (value.slot().index() != 5) return false;
  const TableData& data = value.graph()->tables[std::get<TableRef>(value.slot()).index];
  if (1 + data.array.size() + 2 * data.map.size() > kPollMask) return false;
  if (std::any_of(data.array.begin(), data.array.end(), is_reference)) return false;
  for (const auto& [key, item] : data.map) {
    if (is_reference(key) || is_reference(item)) return false;
  }
  ValueToLua scalars(L, nullptr);
  lua_createtable(L, static_cast<int>(data.array.size()), static_cast<int>(data.map.size()));
  const int table = lua_gettop(L);
  for (std::size_t i = 0; i < data.array.size(); ++i) {
    if (data.array[i].index() == 0) continue;
    scalars.push(data.array[i]);
    lua_rawseti(L, table, static_cast<int>(i + 1));
  }
  for (const auto& [key, item] : data.map) {
    if (key.index() == 0 || item.index() == 0) continue;
    scalars.push(key);
    scalars.push(item);
    lua_rawset(L, table);
  }
  return true;
}

}  // namespace

void push_value(lua_State* L, const Value& value) {
  lua_checkstack(L, 8);
  if (push_flat_table(L, value)) return;
  ValueToLua pusher(L, is_reference(value.slot()) ? value.graph().get() : nullptr);
  pusher.push(value.slot());
  pusher.finish();
}

int push_array_items(lua_State* L, const Value& array) {
  if (!array.is_table()) return 0;
  const Graph* graph = array.graph().get();
  const TableData& root = graph->tables[std::get<TableRef>(array.slot()).index];
  const std::size_t count = array.length();
  if (count > static_cast<std::size_t>(INT_MAX - 8) || !lua_checkstack(L, static_cast<int>(count) + 8)) {
    luaL_error(L, "too many arguments (%d)", static_cast<int>(std::min<std::size_t>(count, INT_MAX)));
  }
  const bool has_references = std::any_of(root.array.begin(), root.array.begin() + static_cast<std::ptrdiff_t>(count),
                                          [](const Slot& s) { return is_reference(s); });
  ValueToLua pusher(L, has_references ? graph : nullptr);
  for (std::size_t i = 0; i < count; ++i) pusher.push(root.array[i]);
  pusher.finish();
  return static_cast<int>(count);
}

Result<int> push_value_protected(lua_State* L, const Value& value, std::uint64_t memory_bytes) {
  return push_protected(L, push_value_entry, value, memory_bytes);
}

Result<int> push_array_items_protected(lua_State* L, const Value& array, std::uint64_t memory_bytes) {
  return push_protected(L, push_items_entry, array, memory_bytes);
}

}  // namespace sojourn::sandbox::lua
