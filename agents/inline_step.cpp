// The rule that lets an agent's step be tried on the network thread (inline_step.hpp).
#include "agents/inline_step.hpp"

#include <string>
#include <vector>

#include "sandbox/lua/lua_source_scan.hpp"

namespace sojourn {

bool inline_step_text(std::string_view text) {
  static const std::vector<std::string> calls = {"go", "wait"};
  static const std::vector<std::string> reads = {"id", "home", "here", "owner", "epoch", "itinerary", "isolation"};
  static const std::vector<std::string> banned = {
      "node",     "require_remote", "require", "_G",     "getfenv", "setfenv",   "getmetatable",
      "rawget",   "rawset",         "loadstring", "load", "loadfile", "dofile",  "module",
      "package",  "debug",          "coroutine", "jit",  "ffi",     "io",        "os",
  };
  return sandbox::lua::names_only_listed_fields(text, "agent", calls, reads, banned);
}

}  // namespace sojourn
