// The travel check (lua_travel.hpp): an iterative depth-first walk over L's stack. Each node is
// a container (table, function, thread) kept in one slot of L; its children are pushed above
// it one at a time. A child that cannot travel ends the walk with its path; a container not yet
// seen becomes a node; anything else is popped. Nodes deeper than kMaxDepth are set aside in a
// side table and walked later from their recorded path, so a long linked list cannot overflow
// the Lua stack.
#include "sandbox/lua/lua_travel.hpp"

#include <cstdio>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <lua.hpp>

namespace sojourn::sandbox::strong {

namespace {

// LuaJIT's type tag of FFI cdata (lj_obj.h: LUA_TCDATA), not in the public lua.h.
constexpr int kTypeCdata = 10;
constexpr std::size_t kMaxDepth = 2000;
constexpr unsigned kPollEvery = 4096;

bool cannot_travel(int type) { return type == LUA_TUSERDATA || type == LUA_TLIGHTUSERDATA || type == kTypeCdata; }
bool is_container(int type) { return type == LUA_TTABLE || type == LUA_TFUNCTION || type == LUA_TTHREAD; }

const char* type_name(lua_State* L, int type) {
  if (type == LUA_TLIGHTUSERDATA) return "light userdata";
  if (type == kTypeCdata) return "cdata";
  return lua_typename(L, type);
}

bool is_identifier(std::string_view s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9')) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

// How a table reaches the value of its key at `index`: "name", "[3]", "[\"a b\"]", "[table]".
std::string key_segment(lua_State* L, int index) {
  const int type = lua_type(L, index);
  if (type == LUA_TSTRING) {
    std::size_t len = 0;
    const char* text = lua_tolstring(L, index, &len);
    const std::string_view key(text, len);
    if (is_identifier(key)) return std::string(key);
    std::string quoted = "[\"";
    quoted.append(key.substr(0, 40));
    if (key.size() > 40) quoted += "...";
    return quoted + "\"]";
  }
  if (type == LUA_TNUMBER) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "[%.14g]", lua_tonumber(L, index));
    return buf;
  }
  if (type == LUA_TBOOLEAN) return lua_toboolean(L, index) != 0 ? "[true]" : "[false]";
  return std::string("[") + type_name(L, type) + "]";
}

enum class Kind { table, function, thread };

struct Node {
  Kind kind;
  int slot;             // the container, on L
  std::string segment;  // how its parent reaches it ("" for a frame's function)
  std::size_t parent;   // index in the node stack, or kRoot
  std::string root;     // for a root: the path it starts from
  int phase = 0;
  int n = 0;
  int level = 0;
  lua_State* th = nullptr;
};

constexpr std::size_t kRoot = static_cast<std::size_t>(-1);

void append_segment(std::string& path, std::string_view segment) {
  if (segment.empty()) return;
  if (!path.empty() && segment.front() != '[') path += '.';
  path.append(segment);
}

class Walk {
 public:
  Walk(lua_State* L, const std::function<bool()>& interrupted) : L_(L), interrupted_(interrupted) {}

  // Walks the value on top of L (popped) as a root named `root`.
  TravelCheck run(const std::string& root) {
    const int type = lua_type(L_, -1);
    if (cannot_travel(type)) return refuse(root, type);
    if (!is_container(type) || !visited_.insert(lua_topointer(L_, -1)).second) {
      lua_pop(L_, 1);
      return {};
    }
    push_node(type, root, kRoot, root);
    return loop();
  }

  // Walks the container on top of L, marked seen before, as a root named `root`.
  TravelCheck run_seen(const std::string& root) {
    push_node(lua_type(L_, -1), root, kRoot, root);
    return loop();
  }

  // Marks the value on top of L seen (popped): it is walked later as its own root.
  void mark_seen() {
    visited_.insert(lua_topointer(L_, -1));
    lua_pop(L_, 1);
  }

  // Nodes set aside for depth, walked from their recorded paths.
  TravelCheck run_deferred() {
    for (std::size_t i = 0; i < deferred_paths_.size(); ++i) {
      lua_rawgeti(L_, deferred_slot_, static_cast<int>(i + 1));
      const int type = lua_type(L_, -1);
      push_node(type, deferred_paths_[i], kRoot, deferred_paths_[i]);
      if (TravelCheck c = loop(); c.outcome != TravelCheck::Outcome::clean) return c;
    }
    return {};
  }

 private:
  void push_node(int type, std::string segment, std::size_t parent, std::string root) {
    Node node{type == LUA_TTABLE ? Kind::table : type == LUA_TFUNCTION ? Kind::function : Kind::thread,
              lua_gettop(L_), std::move(segment), parent, std::move(root)};
    if (node.kind == Kind::thread) node.th = lua_tothread(L_, -1);
    nodes_.push_back(std::move(node));
  }

  std::string path_to(std::size_t index, std::string_view last) const {
    std::vector<std::size_t> chain;
    for (std::size_t i = index; i != kRoot; i = nodes_[i].parent) chain.push_back(i);
    std::string path = nodes_[chain.back()].root;
    for (auto it = chain.rbegin() + 1; it != chain.rend(); ++it) append_segment(path, nodes_[*it].segment);
    append_segment(path, last);
    return path;
  }

  TravelCheck refuse(std::string path, int type) {
    TravelCheck c;
    c.outcome = TravelCheck::Outcome::refused;
    c.path = (path.empty() ? std::string("the agent") : path) + " (" + type_name(L_, type) + ")";
    return c;
  }

  TravelCheck loop() {
    std::string segment;
    while (!nodes_.empty()) {
      if (++polled_ % kPollEvery == 0 && interrupted_ && interrupted_()) {
        return {TravelCheck::Outcome::interrupted, {}};
      }
      const std::size_t top = nodes_.size() - 1;
      if (!lua_checkstack(L_, 4) || !next_child(nodes_[top], segment)) {
        lua_settop(L_, nodes_[top].slot - 1);
        nodes_.pop_back();
        continue;
      }
      const int type = lua_type(L_, -1);
      if (cannot_travel(type)) return refuse(path_to(top, segment), type);
      if (!is_container(type) || !visited_.insert(lua_topointer(L_, -1)).second) {
        lua_pop(L_, 1);
        continue;
      }
      if (nodes_.size() >= kMaxDepth) {
        defer(path_to(top, segment));
        continue;
      }
      push_node(type, segment, top, {});
    }
    return {};
  }

  // Sets the value on top of L aside (popped) in a side table below every node.
  void defer(std::string path) {
    if (deferred_slot_ == 0) {
      // Below the node stack: the walk's nodes are above the first root's slot.
      lua_newtable(L_);
      lua_insert(L_, nodes_.front().slot);
      deferred_slot_ = nodes_.front().slot;
      for (Node& node : nodes_) ++node.slot;
    }
    deferred_paths_.push_back(std::move(path));
    lua_rawseti(L_, deferred_slot_, static_cast<int>(deferred_paths_.size()));
  }

  // Pushes the node's next child on L and names it in `segment`; false when it has no more.
  bool next_child(Node& node, std::string& segment) {
    switch (node.kind) {
      case Kind::table: return next_of_table(node, segment);
      case Kind::function: return next_of_function(node, segment);
      case Kind::thread: return next_of_thread(node, segment);
    }
    return false;
  }

  // Phases: 0 metatable, 1 first key, 2 next entry (its key on top), 3 the key of that entry.
  bool next_of_table(Node& node, std::string& segment) {
    for (;;) {
      switch (node.phase) {
        case 0:
          node.phase = 1;
          if (lua_getmetatable(L_, node.slot) != 0) {
            segment = "<metatable>";
            return true;
          }
          break;
        case 1:
          lua_pushnil(L_);
          node.phase = 2;
          break;
        case 2:
          if (lua_next(L_, node.slot) == 0) return false;
          segment = key_segment(L_, -2);
          node.phase = 3;
          return true;
        default: {
          node.phase = 2;
          const int type = lua_type(L_, -1);
          if (cannot_travel(type) || is_container(type)) {
            lua_pushvalue(L_, -1);
            segment = "<key " + key_segment(L_, -1) + ">";
            return true;
          }
          break;
        }
      }
    }
  }

  // Phases: 0 upvalues (n), 1 environment, 2 done.
  bool next_of_function(Node& node, std::string& segment) {
    while (node.phase == 0) {
      const char* name = lua_getupvalue(L_, node.slot, ++node.n);
      if (name == nullptr) {
        node.phase = 1;
        break;
      }
      // A full userdata held by a C function is the library's own state, made by C code and
      // living in the arena (math.random's PRNG state); agent code cannot put a value there.
      if (lua_iscfunction(L_, node.slot) && lua_type(L_, -1) == LUA_TUSERDATA) {
        lua_pop(L_, 1);
        continue;
      }
      segment = *name != '\0' ? std::string("upvalues.") + name : "upvalues[" + std::to_string(node.n) + "]";
      return true;
    }
    if (node.phase == 1) {
      node.phase = 2;
      lua_getfenv(L_, node.slot);
      segment = "<env>";
      return true;
    }
    return false;
  }

  // Phases: 0 decide, 1 stack values of a coroutine not yet started, 2 frames. In a frame,
  // n = 0 is its function, n > 0 its locals, n < 0 its varargs.
  bool next_of_thread(Node& node, std::string& segment) {
    lua_State* th = node.th;
    if (th == L_) return false;  // the scratch thread itself (never reachable by an agent)
    if (node.phase == 0) {
      lua_Debug ar;
      node.phase = lua_getstack(th, 0, &ar) != 0 ? 2 : 1;
    }
    if (node.phase == 1) {
      if (++node.n > lua_gettop(th)) return false;
      lua_pushvalue(th, node.n);
      lua_xmove(th, L_, 1);
      segment = node.n == 1 ? "<body>" : "<argument " + std::to_string(node.n - 1) + ">";
      return true;
    }
    for (;;) {
      lua_Debug ar;
      if (lua_getstack(th, node.level, &ar) == 0) return false;
      if (node.n == 0) {
        node.n = 1;
        if (lua_getinfo(th, "f", &ar) != 0) {
          lua_xmove(th, L_, 1);
          segment.clear();  // the frame's upvalues read as "upvalues.x" of that thread
          return true;
        }
      }
      if (node.n > 0) {
        const char* name = nullptr;
        while ((name = lua_getlocal(th, &ar, node.n)) != nullptr) {
          ++node.n;
          lua_xmove(th, L_, 1);
          // Slots past the frame's live variables: stale values of finished expressions,
          // which the agent can no longer reach (not checked, see the header).
          if (name[0] == '(') {
            lua_pop(L_, 1);
            continue;
          }
          segment = std::string("locals.") + name;
          return true;
        }
        node.n = -1;
      }
      if (const char* name = lua_getlocal(th, &ar, node.n); name != nullptr) {
        segment = "varargs[" + std::to_string(-node.n) + "]";
        --node.n;
        lua_xmove(th, L_, 1);
        return true;
      }
      ++node.level;
      node.n = 0;
    }
  }

  lua_State* L_;
  const std::function<bool()>& interrupted_;
  std::vector<Node> nodes_;
  std::unordered_set<const void*> visited_;
  std::vector<std::string> deferred_paths_;
  int deferred_slot_ = 0;
  unsigned polled_ = 0;
};

}  // namespace

TravelCheck check_travel(lua_State* L, lua_State* co, const std::function<bool()>& interrupted) {
  const int base = lua_gettop(L);
  TravelCheck result;
  if (lua_checkstack(L, 8)) {
    Walk walk(L, interrupted);
    // The globals are walked last, under their own name, not as some function's environment.
    lua_pushvalue(L, LUA_GLOBALSINDEX);
    walk.mark_seen();
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    result = walk.run("");
    if (result.outcome == TravelCheck::Outcome::clean) {
      lua_pushvalue(L, LUA_GLOBALSINDEX);
      result = walk.run_seen("globals");
    }
    if (result.outcome == TravelCheck::Outcome::clean) result = walk.run_deferred();
  }
  lua_settop(L, base);
  return result;
}

}  // namespace sojourn::sandbox::strong
