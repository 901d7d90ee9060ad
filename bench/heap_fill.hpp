// The data a migration-cost agent carries, shared by bench_migration_cost and the process CRIU
// dumps beside it (criu_holder.cpp), so both hold the same heap: `fill(kb)` builds kb strings of
// 1,000 bytes of pseudo-random hex digits (about what zstd finds in real data, where a string
// of one repeated byte would flatter any image).
#pragma once

namespace sojourn::bench {

inline constexpr const char* kFillLua = R"(
local function fill(kb)
  local blob, piece = {}, {}
  for i = 1, kb do
    for j = 1, 125 do piece[j] = string.format("%08x", math.random(0, 2147483647)) end
    blob[i] = table.concat(piece)
  end
  return blob
end
)";

}  // namespace sojourn::bench
