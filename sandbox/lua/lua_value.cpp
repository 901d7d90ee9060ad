// Lua -> Value: tables and functions are walked breadth-first through a Lua-side queue (no
// recursion, so a deep chain cannot overflow the C stack), and each Lua table's, function's
// and upvalue's identity maps to one graph table, function or cell, so shared tables,
// shared upvalues and cycles come out as they went in.
#include "sandbox/lua/lua_value.hpp"

#include <algorithm>
#include <cmath>
#include <new>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <lua.hpp>

#include "sandbox/lua/lua_function.hpp"
#include "sandbox/lua/lua_limits.hpp"
#include "sandbox/lua/lua_path.hpp"

namespace sojourn::sandbox::lua {

namespace {

using ::sojourn::detail::FunctionRef;
using ::sojourn::detail::Graph;
using ::sojourn::detail::Slot;
using ::sojourn::detail::TableData;
using ::sojourn::detail::TableRef;

constexpr std::uint32_t kNoParent = UINT32_MAX;
constexpr std::uint32_t kPollMask = 1023;  // the limits are polled every 1024 values
constexpr double kExactIntegerBound = 9007199254740992.0;  // 2^53
constexpr double kKeyIntegerBound = 9.2e18;                // Value's own key normalisation
constexpr std::size_t kSlotCost = sizeof(Slot);
constexpr std::size_t kTableCost = sizeof(TableData) + 64;  // + path step, identity map node
constexpr std::size_t kFunctionCost = sizeof(::sojourn::detail::FunctionData) + 64;
constexpr std::size_t kCellCost = sizeof(Slot) + 3 * sizeof(std::uint32_t) + sizeof(std::string) + 32;

Error memory_error(std::uint64_t max_bytes) {
  return errors::memory_limit(max_bytes);
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

const char* untransferable_reason(int type) {
  switch (type) {
    case LUA_TUSERDATA:
    case LUA_TLIGHTUSERDATA: return "userdata cannot travel";
    case LUA_TTHREAD: return "coroutines cannot travel";
    default: return "this type cannot travel";
  }
}

// Lua -> Value. Runs inside a protected call: the only Lua errors it can meet are memory
// errors (growing the queue, compiling a candidate text), which keep every table and
// function found but not yet visited.
class LuaToValue {
 public:
  LuaToValue(const ToValueOptions& options, bool as_array) : options_(options), as_array_(as_array) {}

  // The values are at stack 1..count and the queue table at count + 1.
  void convert(lua_State* L, int count) {
    queue_ = count + 1;
    if (as_array_) {
      result = Value::table();
      graph_ = result.graph().get();
      table_nodes_.push_back(add_node(kNoParent, Slot{}, Via::root));
      for (int i = 1; i <= count; ++i) {
        const Slot key{static_cast<std::int64_t>(i)};
        std::optional<Slot> item = slot_of(L, i, 0, key, Via::field);
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
    } else {
      const int type = lua_type(L, 1);
      if (type == LUA_TTABLE || type == LUA_TFUNCTION) {
        // The root keeps the root name: no node of its own.
        std::optional<Slot> root = slot_of(L, 1, kNoParent, Slot{}, Via::root);
        if (!root) return;
        result = Value::from_slot(graph_holder_, std::move(*root));
      } else {
        std::optional<Slot> only = slot_of(L, 1, kNoParent, Slot{}, Via::root);
        if (only) result = Value::from_slot(nullptr, std::move(*only));
        return;
      }
    }
    for (std::size_t q = 0; q < queued_.size(); ++q) {
      lua_rawgeti(L, queue_, static_cast<int>(q + 1));
      if (queued_[q].function) {
        fill_function(L, lua_gettop(L), queued_[q].index);
      } else {
        fill_table(L, lua_gettop(L), queued_[q].index);
      }
      if (error) return;
      lua_pop(L, 1);
    }
  }

  std::optional<Error> error;
  Value result;

 private:
  enum class Via : std::uint8_t { root, field, key, upvalue };
  struct PathStep {
    std::uint32_t parent;  // node of the table or function that holds this one
    Slot key;              // field key, or upvalue name
    Via via;
  };
  struct Queued {
    bool function;
    std::uint32_t index;  // graph table or function
  };

  bool charge(std::size_t bytes) {
    used_ += bytes;
    if (options_.max_bytes != 0 && used_ > options_.max_bytes) {
      error = memory_error(options_.max_bytes);
      return false;
    }
    return true;
  }

  Graph& graph() {
    if (graph_ == nullptr) {
      graph_holder_ = std::make_shared<Graph>();
      graph_ = graph_holder_.get();
    }
    return *graph_;
  }

  std::uint32_t add_node(std::uint32_t parent, Slot key, Via via) {
    steps_.push_back(PathStep{parent, std::move(key), via});
    return static_cast<std::uint32_t>(steps_.size() - 1);
  }

  static std::string step_text(const PathStep& step) {
    switch (step.via) {
      case Via::root: return {};
      case Via::key: return "[<key>]";
      case Via::upvalue: return " (upvalue '" + std::get<std::string>(step.key) + "')";
      case Via::field: break;
    }
    return path_segment(step.key);
  }

  std::string path_of(std::uint32_t node) const {
    std::vector<std::uint32_t> chain;
    for (std::uint32_t n = node; n != kNoParent; n = steps_[n].parent) chain.push_back(n);
    std::string path(options_.root_name);
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) path += step_text(steps_[*it]);
    return path;
  }

  void fail_untransferable(lua_State* L, int index, std::uint32_t owner, const Slot& key, Via via,
                           const std::string& reason) {
    std::string path = owner == kNoParent ? std::string(options_.root_name) : path_of(owner);
    if (via == Via::key) {
      path += "[<" + std::string(lua_typename(L, lua_type(L, index))) + ">]";
    } else if (via != Via::root) {
      path += step_text(PathStep{owner, key, via});
    }
    error = make_error(Errc::not_transferable, "value at " + path + " cannot travel: " + reason);
  }

  void enqueue(lua_State* L, int index, Queued item) {
    queued_.push_back(item);
    lua_pushvalue(L, index);
    lua_rawseti(L, queue_, static_cast<int>(queued_.size()));
  }

  std::optional<Slot> table_slot(lua_State* L, int index, std::uint32_t owner, const Slot& key, Via via) {
    auto [it, inserted] = seen_tables_.try_emplace(lua_topointer(L, index), 0);
    if (!inserted) return Slot{TableRef{it->second}};
    if (!charge(kTableCost)) return std::nullopt;
    Graph& g = graph();
    const auto table = static_cast<std::uint32_t>(g.tables.size());
    it->second = table;
    g.tables.emplace_back();
    table_nodes_.push_back(add_node(owner, via == Via::key ? Slot{} : key, via));
    enqueue(L, index, Queued{false, table});
    return Slot{TableRef{table}};
  }

  std::optional<Slot> function_slot(lua_State* L, int index, std::uint32_t owner, const Slot& key, Via via) {
    auto [it, inserted] = seen_functions_.try_emplace(lua_topointer(L, index), 0);
    if (!inserted) return Slot{FunctionRef{it->second}};
    seen_functions_.erase(it);  // until it is known to travel
    auto origin = function_origin(L, index, sources_);
    if (auto* reason = std::get_if<std::string>(&origin)) {
      fail_untransferable(L, index, owner, key, via, *reason);
      return std::nullopt;
    }
    auto& o = std::get<FunctionOrigin>(origin);
    // A text shared by many closures is counted once.
    std::size_t cost = kFunctionCost + o.library_name.size();
    for (const ::sojourn::detail::SharedText* text : {&o.source, &o.chunk_name}) {
      if (charged_texts_.insert(text->str().data()).second) cost += text->str().size();
    }
    if (!charge(cost)) return std::nullopt;
    Graph& g = graph();
    const auto function = static_cast<std::uint32_t>(g.functions.size());
    seen_functions_.emplace(lua_topointer(L, index), function);
    g.functions.push_back(::sojourn::detail::FunctionData{std::move(o.source), std::move(o.chunk_name), o.line,
                                               std::move(o.library_name), {}, {}});
    function_nodes_.push_back(add_node(owner, via == Via::key ? Slot{} : key, via));
    if (g.functions.back().library_name.empty()) enqueue(L, index, Queued{true, function});
    return Slot{FunctionRef{function}};
  }

  // The slot for the Lua value at `index`, found under `key` of node `owner`.
  std::optional<Slot> slot_of(lua_State* L, int index, std::uint32_t owner, const Slot& key, Via via) {
    // Converting a large graph takes time the count hook does not see.
    if ((++visited_ & kPollMask) == 0) sandbox::detail::poll_limits(L);
    switch (lua_type(L, index)) {
      case LUA_TNIL: return Slot{};
      case LUA_TBOOLEAN: return Slot{lua_toboolean(L, index) != 0};
      case LUA_TNUMBER: {
        const double d = lua_tonumber(L, index);
        return via == Via::key ? key_number_slot(d) : number_slot(d);
      }
      case LUA_TSTRING: {
        std::size_t len = 0;
        const char* s = lua_tolstring(L, index, &len);
        if (!charge(len)) return std::nullopt;
        return Slot{std::string(s, len)};
      }
      case LUA_TTABLE: return table_slot(L, index, owner, key, via);
      case LUA_TFUNCTION: return function_slot(L, index, owner, key, via);
      default:
        fail_untransferable(L, index, owner, key, via, untransferable_reason(lua_type(L, index)));
        return std::nullopt;
    }
  }

  // Records the upvalues of the Lua function at stack `index` as cells of graph function
  // `function`; an upvalue shared with a function seen before gets that function's cell.
  void fill_function(lua_State* L, int index, std::uint32_t function) {
    const std::uint32_t node = function_nodes_[function];
    for (int i = 1;; ++i) {
      const char* name = lua_getupvalue(L, index, i);
      if (name == nullptr) break;
      const std::string upvalue_name(name);
      if (!charge(kCellCost + upvalue_name.size())) return;
      auto [it, inserted] = seen_cells_.try_emplace(lua_upvalueid(L, index, i), 0);
      if (inserted) {
        it->second = static_cast<std::uint32_t>(graph_->cells.size());
        graph_->cells.emplace_back();
        std::optional<Slot> value = slot_of(L, lua_gettop(L), node, Slot{upvalue_name}, Via::upvalue);
        if (!value) return;
        graph_->cells[it->second] = std::move(*value);
      }
      lua_pop(L, 1);
      ::sojourn::detail::FunctionData& data = graph_->functions[function];
      data.upvalue_names.push_back(upvalue_name);
      data.upvalue_cells.push_back(it->second);
    }
  }

  // Converts the Lua table at stack `index` into graph table `table`: keys 1..n without a
  // hole go to the array part, every other key to the map (Value's canonical form).
  void fill_table(lua_State* L, int index, std::uint32_t table) {
    const std::uint32_t node = table_nodes_[table];
    std::size_t n = 0;
    for (;;) {
      lua_rawgeti(L, index, static_cast<int>(n + 1));
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        break;
      }
      const Slot key{static_cast<std::int64_t>(n + 1)};
      std::optional<Slot> item = slot_of(L, lua_gettop(L), node, key, Via::field);
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
      std::optional<Slot> key = slot_of(L, key_index, node, Slot{}, Via::key);
      if (!key) return;
      std::optional<Slot> value = slot_of(L, value_index, node, *key, Via::field);
      if (!value || !charge(2 * kSlotCost)) return;
      lua_pop(L, 1);
      graph_->tables[table].map.emplace_back(std::move(*key), std::move(*value));
    }
  }

  const ToValueOptions& options_;
  const bool as_array_;
  Graph* graph_ = nullptr;  // result's graph, filled directly: Value::set is linear per key
  std::shared_ptr<Graph> graph_holder_;
  std::vector<PathStep> steps_;                 // nodes: where each table and function was found
  std::vector<std::uint32_t> table_nodes_;      // graph table -> node
  std::vector<std::uint32_t> function_nodes_;   // graph function -> node
  std::unordered_map<const void*, std::uint32_t> seen_tables_;     // Lua table -> graph table
  std::unordered_map<const void*, std::uint32_t> seen_functions_;  // Lua function -> graph function
  std::unordered_map<void*, std::uint32_t> seen_cells_;            // upvalue id -> graph cell
  std::vector<Queued> queued_;                  // what queue slot i + 1 holds
  SourceCache sources_;
  std::unordered_set<const void*> charged_texts_;  // texts already counted against max_bytes
  int queue_ = 0;
  std::size_t used_ = 0;
  std::uint32_t visited_ = 0;
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
    return errors::invalid_argument(text);
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

namespace {

// At most this many values go through scalars_as_array (fewer than kPollMask: the converter
// would not poll the limits for them either).
constexpr int kScalarRunMax = 16;

// pop_as_array for a few scalars (nil, booleans, numbers, strings: a run's usual results and
// node.call's usual arguments): the same array, charges and errors as the converter, without
// its protected call, queue table and maps (a third of the conversion's instructions, and a
// Lua table of garbage each time). Nothing here raises a Lua error. False, with the stack and
// `out` untouched, when a value is of another type; else `out` is the answer, made in place
// (no Result moved on the way out).
bool scalars_as_array(lua_State* L, int count, const ToValueOptions& options, Result<Value>& out) {
  if (count > kScalarRunMax) return false;
  const int base = lua_gettop(L) - count;
  for (int i = 1; i <= count; ++i) {
    const int type = lua_type(L, base + i);
    if (type != LUA_TNIL && type != LUA_TBOOLEAN && type != LUA_TNUMBER && type != LUA_TSTRING) return false;
  }
  try {
    *out = Value::table();  // out holds a Value (pop_as_array's): no Result assigned
    TableData& root = out->graph()->tables[0];
    std::size_t used = 0;
    auto charge = [&](std::size_t bytes) {
      used += bytes;
      return options.max_bytes == 0 || used <= options.max_bytes;
    };
    bool fits = true;
    for (int i = 1; i <= count && fits; ++i) {
      const int index = base + i;
      Slot item;
      switch (lua_type(L, index)) {
        case LUA_TNIL: continue;
        case LUA_TBOOLEAN: item = Slot{lua_toboolean(L, index) != 0}; break;
        case LUA_TNUMBER: item = number_slot(lua_tonumber(L, index)); break;
        default: {
          std::size_t len = 0;
          const char* text = lua_tolstring(L, index, &len);
          fits = charge(len);
          if (fits) item = Slot{std::string(text, len)};
          break;
        }
      }
      fits = fits && charge(kSlotCost);
      if (!fits) break;
      if (root.array.size() + 1 == static_cast<std::size_t>(i) && root.map.empty()) {
        root.array.push_back(std::move(item));
      } else {
        root.map.emplace_back(Slot{static_cast<std::int64_t>(i)}, std::move(item));
      }
    }
    if (!fits) out = memory_error(options.max_bytes);
  } catch (const std::bad_alloc&) {
    out = make_error(Errc::memory_limit, "out of memory while converting a Lua value");
  }
  lua_pop(L, count);
  return true;
}

}  // namespace

Result<Value> pop_as_array(lua_State* L, int count, const ToValueOptions& options) {
  Result<Value> out;  // a Value: scalars_as_array fills it in place
  if (scalars_as_array(L, count, options, out)) return out;
  return convert_top(L, count, true, options);
}

}  // namespace sojourn::sandbox::lua
