// JSON text <-> Value, for the command line and for tools. JSON arrays become tables
// with keys 1..n, objects tables with string keys; tables whose keys are exactly 1..n
// print as arrays, others as objects (number keys as strings). The empty table always
// prints as [] (n = 0), so `{}` read back prints `[]`. A cycle cannot be JSON.
// A function prints as {"$function": "function(x) ... end"} (its text; a library function
// its name, {"$function": "table.insert"}); JSON input never makes a function, such an
// object reads back as a table with a "$function" key.
#pragma once

#include <string>
#include <string_view>

#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn {

inline constexpr int kMaxJsonDepth = 200;

//   invalid_json "invalid JSON: ..." (syntax, or nesting deeper than 200)
Result<Value> value_from_json(std::string_view text);

//   not_transferable "value at PATH cannot be written as JSON: ..." (cycle, table key, too deep)
Result<std::string> value_to_json(const Value& v, bool pretty = false);

}  // namespace sojourn
