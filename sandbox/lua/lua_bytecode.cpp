// Reads LuaJIT's dump format (lj_bcwrite.c): header (ESC 'L' 'J' version, flags, chunk
// name unless stripped), then prototypes, each a uleb128 length and its bytes, ending in 0.
#include "sandbox/lua/lua_bytecode.hpp"

#include <array>
#include <cstdint>
#include <mutex>
#include <string_view>

#include <lua.hpp>

namespace sojourn::sandbox::lua {

namespace {

int dump_writer(lua_State* /*L*/, const void* p, std::size_t size, void* out) {
  static_cast<std::string*>(out)->append(static_cast<const char*>(p), size);
  return 0;
}

bool read_uleb(std::string_view s, std::size_t& pos, std::uint32_t& value) {
  value = 0;
  for (int shift = 0; shift < 35; shift += 7) {
    if (pos >= s.size()) return false;
    const auto byte = static_cast<unsigned char>(s[pos++]);
    value |= static_cast<std::uint32_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// One prototype of a dump without its upvalue descriptors (which say where in the parent
// each upvalue lives, and differ between the original and a recompiled candidate) and
// without its debug info: header, bytecode and constants. Empty when malformed.
std::string prototype_signature(std::string_view p, bool stripped) {
  if (p.size() < 4) return {};
  const auto sizeuv = static_cast<unsigned char>(p[3]);
  std::size_t at = 4;
  std::uint32_t kgc = 0, kn = 0, nbc = 0, sizedbg = 0, ignored = 0;
  if (!read_uleb(p, at, kgc) || !read_uleb(p, at, kn) || !read_uleb(p, at, nbc)) return {};
  const std::size_t counts_end = at;
  if (!stripped && (!read_uleb(p, at, sizedbg) ||
                    (sizedbg != 0 && (!read_uleb(p, at, ignored) || !read_uleb(p, at, ignored))))) {
    return {};
  }
  const std::size_t bc_end = at + std::size_t{nbc} * 4, k_begin = bc_end + std::size_t{sizeuv} * 2;
  if (k_begin + sizedbg > p.size()) return {};
  std::string sig(p.substr(0, counts_end));
  sig.append(p.substr(at, bc_end - at));
  sig.append(p.substr(k_begin, p.size() - sizedbg - k_begin));
  return sig;
}

// The opcodes of every instruction of the dump of the function at -1 (a 256-bit set), false
// when the dump cannot be read. The first instruction of a prototype is not dumped.
bool dump_opcodes(lua_State* L, std::array<bool, 256>& seen) {
  seen.fill(false);
  std::string dump;
  if (lua_dump(L, dump_writer, &dump) != 0 || dump.size() < 5) return false;
  std::size_t pos = 4;
  std::uint32_t flags = 0, len = 0;
  if (!read_uleb(dump, pos, flags)) return false;
  const bool big_endian = (flags & 0x01) != 0;
  const bool stripped = (flags & 0x02) != 0;
  if (!stripped && (!read_uleb(dump, pos, len) || (pos += len) > dump.size())) return false;
  bool ended = false;
  while (read_uleb(dump, pos, len)) {
    if (len == 0) {
      ended = true;
      break;
    }
    if (pos + len > dump.size()) return false;
    const std::string_view p = std::string_view(dump).substr(pos, len);
    pos += len;
    if (p.size() < 4) return false;
    std::size_t at = 4;
    std::uint32_t kgc = 0, kn = 0, nbc = 0, sizedbg = 0, ignored = 0;
    if (!read_uleb(p, at, kgc) || !read_uleb(p, at, kn) || !read_uleb(p, at, nbc)) return false;
    if (!stripped && (!read_uleb(p, at, sizedbg) ||
                      (sizedbg != 0 && (!read_uleb(p, at, ignored) || !read_uleb(p, at, ignored))))) {
      return false;
    }
    if (at + std::size_t{nbc} * 4 > p.size()) return false;
    for (std::uint32_t i = 0; i < nbc; ++i) {
      seen[static_cast<unsigned char>(p[at + std::size_t{i} * 4 + (big_endian ? 3 : 0)])] = true;
    }
  }
  return ended;
}

// GSET's opcode in this LuaJIT, -1 when it could not be told.
int gset_opcode(lua_State* L) {
  static std::once_flag once;
  static int opcode = -1;
  std::call_once(once, [L] {
    std::array<bool, 256> with{}, without{};
    const int top = lua_gettop(L);
    if (luaL_loadstring(L, "x = 1") == 0 && dump_opcodes(L, with) && luaL_loadstring(L, "local x = 1") == 0 &&
        dump_opcodes(L, without)) {
      int found = -1, count = 0;
      for (int op = 0; op < 256; ++op) {
        if (with[op] && !without[op]) {
          found = op;
          ++count;
        }
      }
      if (count == 1) opcode = found;
    }
    lua_settop(L, top);
  });
  return opcode;
}

}  // namespace

bool writes_no_global(lua_State* L) {
  const int gset = gset_opcode(L);
  if (gset < 0) return false;
  std::array<bool, 256> seen{};
  return dump_opcodes(L, seen) && !seen[static_cast<std::size_t>(gset)];
}

std::string bytecode_signature(lua_State* L) {
  std::string dump;
  if (lua_dump(L, dump_writer, &dump) != 0 || dump.size() < 5) return {};
  std::size_t pos = 4;
  std::uint32_t flags = 0, len = 0;
  if (!read_uleb(dump, pos, flags)) return {};
  const bool stripped = (flags & 0x02) != 0;
  if (!stripped && (!read_uleb(dump, pos, len) || (pos += len) > dump.size())) return {};
  std::string sig;
  while (read_uleb(dump, pos, len) && len != 0 && pos + len <= dump.size()) {
    const std::string one = prototype_signature(std::string_view(dump).substr(pos, len), stripped);
    if (one.empty()) return {};
    sig.append(std::to_string(one.size())).append(":").append(one);
    pos += len;
  }
  return sig;
}

}  // namespace sojourn::sandbox::lua
