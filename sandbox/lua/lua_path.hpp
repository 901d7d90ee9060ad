// Paths in "value at PATH cannot travel" messages, Lua-like: root.name, root[3], root["odd key"].
#pragma once

#include <string>

#include "sojourn/core/value.hpp"

namespace sojourn::sandbox::lua {

// One step of a path under a table key: .name, [3], [1.5], [true], ["odd key"], [<table>].
std::string path_segment(const ::sojourn::detail::Slot& key);

}  // namespace sojourn::sandbox::lua
