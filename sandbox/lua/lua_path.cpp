// Path steps for messages; keys that are names print as .name, others in brackets.
#include "sandbox/lua/lua_path.hpp"

#include <algorithm>
#include <cstdio>

#include "sandbox/lua/lua_source_scan.hpp"

namespace sojourn::sandbox::lua {

std::string path_segment(const detail::Slot& key) {
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
    case 6: return "[<function>]";
    default: return "[?]";
  }
}

}  // namespace sojourn::sandbox::lua
